"""Package attributes imported on first use (PEP 562), so importing a package costs nothing until a
name from it is used: the server's warm start reads a model card from ``models`` without importing
torch, which the architectures and training modules need."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, where: Mapping[str, str], namespace: dict
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__``: ``where`` maps each exported name to the submodule
    defining it; other names resolve to submodules (``models.checkpoint`` after ``import models``).
    A name once loaded is stored in the package's ``namespace`` (its globals), so later lookups skip this."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
