"""Names a package exports without importing their modules until first use (PEP 562): importing the package
stays cheap (no torch, no device work), and the names still read as plain attributes."""

from importlib import import_module
from typing import Callable, Dict, Tuple


def lazy_exports(package: str, names: Dict[str, str], namespace: dict) -> Tuple[Callable, Callable]:
    """(__getattr__, __dir__) for `package`, whose `names` map a public name to the module (relative to the
    package) that defines it; a name is imported once, then kept in the package's `namespace`."""

    def __getattr__(name):
        if name in names:
            value = getattr(import_module(names[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
