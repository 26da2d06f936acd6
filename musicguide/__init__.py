"""musicguide: edit real music with a pretrained latent diffusion model and guidance gradients."""

from importlib import import_module

__version__ = "0.1.0"


def lazy_exports(package: str, home: dict[str, str], first: tuple[str, ...] = ()):
    """A package's `__getattr__` that imports each public name's module (`home[name]`) on first use,
    after the modules in `first` (the CLI's command modules, which register on its app). Python
    imports a package before any module in it, so a package that imported its modules at the top
    would make each of them wait for all the others: `musicguide --help` for torch."""

    def __getattr__(name: str):
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        for module in first:
            import_module(module)
        return getattr(import_module(home[name]), name)

    return __getattr__


# `from musicguide import Editor` imports the API (and, when it runs, torch) only when asked.
_HOME = {"Editor": "musicguide.api", "Result": "musicguide.api", "Sidecar": "musicguide.api"}
__getattr__ = lazy_exports(__name__, _HOME)
__all__ = ["Editor", "Result", "Sidecar", "__version__", "lazy_exports"]
