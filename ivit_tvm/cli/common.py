"""What every ivit-tvm command shares: click settings and one-line errors for people.

Imports neither PyTorch nor the TVM compiler, so runtime-only commands stay light.
"""

from __future__ import annotations

import functools

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXPECTED_ERRORS = (ValueError, OSError)  # CheckpointError, ArtifactError are ValueErrors


class CommandError(click.ClickException):
    """A one-line error for people: `PROG: error: MESSAGE` on stderr, exit status 1."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog

    def show(self, file=None) -> None:
        click.echo(f"{self.prog}: error: {self.message}", err=True)


def reports_errors(command):
    """Turn the expected errors raised inside a click command into a `CommandError`."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as err:
            prog = click.get_current_context().command.name
            message = " ".join(str(err).split()) or type(err).__name__
            raise CommandError(prog, message) from err

    return wrapper


def note(message: str) -> None:
    """A remark for the user on stderr (stdout carries the command's result)."""
    click.echo(f"note: {message}", err=True)


