"""One small registry type for every named thing a command line chooses: architectures,
procedures, experiments, figures, profiles, executors and numerics modes.

A ``Registry`` is a read-only mapping from name to item, in registration order. Registering a
name twice is a programming error (ValueError at import); looking up an unknown name raises
KeyError whose message is the one line a user sees, with the closest name and the valid ones:
``unknown procedure 'wgangp' (did you mean 'wgan-gp'?); valid: dcgan, lsgan, wgan, wgan-gp``.
The CLI turns it into ``--procedure: ...`` (a ``UserError``); inside the code, items are
objects, and names are not compared again. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # "procedure": the word used in messages
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise KeyError(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"

    def unknown(self, name: object) -> str:
        """The one-line message for a name that is not registered."""
        close = difflib.get_close_matches(str(name), list(self._items), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self._items)}"
