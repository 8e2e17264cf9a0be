"""The one error type of checkpoint reading and writing, and how its messages list keys."""

from __future__ import annotations

KEYS_SHOWN = 5


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def name_keys(keys: list[str], limit: int = KEYS_SHOWN) -> str:
    """The first `limit` keys, comma-separated, with the count of the rest."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
