"""A small generic registry: the one piece of global state aikd allows.

Teachers, backbones and misalignments are plug-ins. Each family has one :class:`Registry`; plug-ins add
themselves with the :meth:`Registry.register` decorator and are built by name through :meth:`Registry.create`
(the ``timm.create_model`` pattern). Because names come from user configs, lookups fail with the list of
known names and a close match instead of a bare ``KeyError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one plug-in family.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"teacher"``).
        on_miss: optional callable run once before the first failed lookup; it may import plug-in packages
            so that lazily registered plug-ins (e.g. ``teachers/``) become visible without an import-time
            dependency from ``aikd`` to them.
    """

    def __init__(self, kind: str, on_miss: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._on_miss = on_miss
        self._loaded = on_miss is None

    def register(
        self, name: str | None = None, *, override: bool = False
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator adding a factory under ``name`` (default: the object's ``__name__``).

        Duplicate names are errors unless ``override=True``: two plug-ins silently shadowing each other is the
        kind of bug that only shows up as wrong numbers.
        """

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            key = name or obj.__name__
            if key in self._entries and not override and self._entries[key] is not obj:
                raise ValueError(
                    f"{self.kind} '{key}' is already registered by {self._entries[key]!r}; "
                    f"pick another name or pass override=True"
                )
            self._entries[key] = obj
            return obj

        return deco

    def _ensure_loaded(self) -> None:
        if not self._loaded and self._on_miss is not None:
            self._loaded = True
            self._on_miss()

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered as ``name``; raise ``KeyError`` naming the known ones otherwise."""
        if name not in self._entries:
            self._ensure_loaded()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise KeyError(
                f"unknown {self.kind} '{name}'. Known: {', '.join(sorted(self._entries)) or '(none)'}.{hint}"
            )
        return self._entries[name]

    def create(self, name: str, /, **kwargs: Any) -> T:
        """Build the plug-in registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def list(self) -> list[str]:
        """Sorted names of all registered plug-ins (loading lazy plug-ins first)."""
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
