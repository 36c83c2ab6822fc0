"""Small helpers the tests share."""

from __future__ import annotations

__all__ = ["T0", "Clock"]

T0 = 1_800_000_000.0


class Clock:
    """A settable clock returning Unix seconds (``now``, also reachable as ``t``)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    @property
    def t(self) -> float:
        """The same value as ``now``."""
        return self.now

    @t.setter
    def t(self, value: float) -> None:
        self.now = value
