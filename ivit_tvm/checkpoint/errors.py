"""The one error type of checkpoint reading and writing, and how its messages list keys."""

from __future__ import annotations

KEYS_SHOWN = 5


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def name_keys(keys: list[str], limit: int = KEYS_SHOWN) -> str:
    """The first `limit` keys, comma-separated, with the count of the rest."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class AssumedConfigWarning(UserWarning):
    """A configuration field a checkpoint without metadata does not tell, taken from a
    convention (e.g. timm's 64-dim heads). `load_checkpoint` warns once per field and also
    returns the fields in `CheckpointInfo.assumed`; the commands print it as a note."""

    def __init__(self, path, field: str, value, reason: str):
        self.path, self.field, self.value, self.reason = path, field, value, reason
        super().__init__(self.text(f"{field}= to load_checkpoint"))

    def text(self, how: str) -> str:
        """The notice, ending with how to give the field instead."""
        return (f"{self.path.name} has no metadata: {self.field}={self.value} taken from "
                f"{self.reason}; pass {how} to override")
