"""Registries of the pluggable parts of rsfm: encoders, necks, heads, methods and datasets.

A part registers itself with a decorator where it is defined, as timm's ``register_model``::

    from rsfm.utils.registry import HEADS

    @HEADS.register
    class MyHead(Head):
        ...

Recipes name registered parts by class name in ``class_path`` (``class_path: UperNetHead``),
or by full import path for parts of other packages (``class_path: mypkg.heads.MyHead``);
``rsfm list heads`` prints what is registered. The packages that define parts import their
modules in their ``__init__``, so importing :mod:`rsfm.models`, :mod:`rsfm.methods` or
:mod:`rsfm.data` fills the registries.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rsfm.utils.errors import ConfigError

__all__ = ["DATASETS", "ENCODERS", "HEADS", "METHODS", "NECKS", "REGISTRIES", "Registry"]

T = TypeVar("T")


class Registry:
    """Name → class (or factory) table of one kind of part.

    Args:
        kind: plural name of the kind, e.g. ``"heads"`` (used in messages and ``rsfm list``).
        package: module whose import registers the built-in parts (e.g. ``"rsfm.models"``).
    """

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, Any] = {}

    def register(self, obj: T | None = None, *, name: str | None = None) -> Any:
        """Register a class or function under its ``__name__`` (or ``name``); usable as a decorator.

        Raises:
            ValueError: if another object is registered under the same name.
        """

        def add(o: T) -> T:
            key = name or o.__name__  # type: ignore[attr-defined]
            old = self._items.get(key)
            if old is not None and old is not o and _qualname(old) != _qualname(o):
                raise ValueError(f"{self.kind}: {key!r} is already registered ({_qualname(old)})")
            self._items[key] = o
            return o

        return add(obj) if obj is not None else add

    def _load(self) -> None:
        import importlib

        importlib.import_module(self.package)

    def get(self, name: str) -> Any:
        """The part registered as ``name``.

        Raises:
            ConfigError: naming the known parts if ``name`` is not registered.
        """
        self._load()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind[:-1]} {name!r}; registered {self.kind}: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def describe(self) -> list[tuple[str, str, str]]:
        """``(name, import path, first docstring line)`` of every registered part, sorted by name."""
        rows = []
        for key in self.names():
            obj = self._items[key]
            doc = inspect.getdoc(obj) or ""
            rows.append((key, _qualname(obj), doc.splitlines()[0] if doc else ""))
        return rows


def _qualname(obj: Callable[..., Any] | type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


#: Encoders (ViT, ResNet, ...): modules with timm's ``forward_intermediates``.
ENCODERS = Registry("encoders", "rsfm.models")
#: Necks between an encoder and the heads (simple feature pyramid, ...).
NECKS = Registry("necks", "rsfm.models")
#: Task heads, each with its loss, metrics and sample keys.
HEADS = Registry("heads", "rsfm.models")
#: Pretraining methods (MAE, SelectiveMAE, GeRSP, ...).
METHODS = Registry("methods", "rsfm.methods")
#: Datamodules of dataset layouts (LoveDA, LEVIR-CD, DIOR, ...).
DATASETS = Registry("datasets", "rsfm.data")

REGISTRIES = {r.kind: r for r in (ENCODERS, NECKS, HEADS, METHODS, DATASETS)}
