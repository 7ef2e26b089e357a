"""Task heads that turn a backbone's feature pyramid into predictions."""
