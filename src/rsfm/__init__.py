"""rsfm: remote-sensing foundation models."""

__version__ = "0.2.0"
