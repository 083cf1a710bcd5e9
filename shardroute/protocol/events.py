"""What every sans-IO core here says when it cannot go on without more bytes from the peer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class NeedData:
    pass
