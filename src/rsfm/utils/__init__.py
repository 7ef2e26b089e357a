"""Small helpers every layer of rsfm may use: file writing, user errors, registries, collectives.

This package sits below everything else (see the import contract in ``pyproject.toml``) and
imports nothing heavier than the standard library at module level.
"""
