"""rsfm: remote-sensing foundation models."""

__version__ = "0.3.7"

#: top-level names, imported on first use so that ``import rsfm`` stays light (no torch)
_LAZY = {
    "load_encoder": "rsfm.models.export",
    "export_encoder": "rsfm.models.export",
    "convert_checkpoint": "rsfm.models.convert",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):  # noqa: ANN202 (PEP 562)
    """``rsfm.load_encoder``, ``rsfm.export_encoder`` and ``rsfm.convert_checkpoint``, imported when first used."""
    import importlib

    if name in _LAZY:
        # by name, as below: the root package is no layer (see _register_with_toolkits)
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rsfm' has no attribute {name!r}")


def _register_with_toolkits() -> None:
    """Give timm the ``rsfm_*`` model names and TerraTorch the ``rsfm_*`` backbones, lazily.

    Importing timm or terratorch here would make ``import rsfm`` slow, so each is registered
    right after it is imported (or now, if it already is) by :func:`rsfm.models.interop.after_import`.
    """
    import importlib
    import importlib.abc
    import importlib.util
    import sys

    def register(package: str) -> None:
        try:
            # by name: the root package is no layer, and rsfm.data/… import it for __version__ only;
            # a static import would make import-linter see rsfm.data -> rsfm -> rsfm.models
            importlib.import_module("rsfm.models.interop").after_import(package)
        except Exception as err:  # never break the user's import of timm or terratorch
            import warnings

            warnings.warn(f"rsfm could not register its models with {package}: {err}", stacklevel=2)

    class AfterImport(importlib.abc.MetaPathFinder):
        """Wraps the loader of ``package`` so that :func:`register` runs once the module has executed.

        It stays on ``sys.meta_path`` until the package is really imported: a mere
        ``importlib.util.find_spec(package)`` (how libraries test for an optional dependency)
        must not use it up.
        """

        def __init__(self, package: str) -> None:
            self.package = package
            self.resolving = False

        def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN202
            if name != self.package or self.resolving:
                return None
            self.resolving = True  # the finders after this one give the package's own spec
            try:
                spec = importlib.util.find_spec(name)
            finally:
                self.resolving = False
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            run = spec.loader.exec_module

            def exec_module(module):  # noqa: ANN001, ANN202
                run(module)
                if self in sys.meta_path:  # imported: a failed import leaves the hook for the next try
                    sys.meta_path.remove(self)
                register(name)

            spec.loader.exec_module = exec_module
            return spec

    for package in ("timm", "terratorch"):
        if package in sys.modules:
            register(package)
        else:
            sys.meta_path.insert(0, AfterImport(package))


_register_with_toolkits()
