"""What every ivit-tvm command shares: click settings and one-line errors for people.

Imports neither PyTorch nor the TVM compiler, so runtime-only commands stay light.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import sys
import threading
import traceback

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


class Interrupted(CommandError):
    """Ctrl-C or SIGTERM: `PROG: interrupted` on stderr, exit status 128 + the signal."""

    def __init__(self, prog: str, signum: int):
        super().__init__(prog, SIGNALS[signum])
        self.exit_code = 128 + signum

    def show(self, file=None) -> None:
        click.echo(f"{self.prog}: {self.message}", err=True)


SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class _Signalled(BaseException):
    """Raised by the handler of SIGINT/SIGTERM so that cleanup (`finally`, `with`) runs."""


@contextlib.contextmanager
def _signals_unwind():
    """While inside: SIGINT and SIGTERM raise `_Signalled` once (a second signal must not cut
    the cleanup short); yields the list of signals received. TVM turns an exception raised
    inside one of its calls into a RuntimeError, so the list, not the type, says why."""
    received: list[int] = []

    def handler(signum, frame):
        if not received:
            received.append(signum)
            raise _Signalled(signum)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _drop_quietly(err: BaseException) -> None:
    """Free what the interrupted work held, with stderr silenced: TVM warns when it destroys
    an unfinished Relax builder, which is no news after an interruption."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        while err is not None:
            traceback.clear_frames(err.__traceback__)
            err = err.__context__
        gc.collect()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def reports_errors(command):
    """Turn the expected errors raised inside a click command into a `CommandError`, and
    Ctrl-C / SIGTERM into `Interrupted` after the command's cleanup ran."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        prog = click.get_current_context().command.name
        with _signals_unwind() as received:
            try:
                return command(*args, **kwargs)
            except (KeyboardInterrupt, _Signalled, Exception) as err:
                if received or isinstance(err, (KeyboardInterrupt, _Signalled)):
                    _drop_quietly(err)
                    raise Interrupted(prog, received[0] if received else signal.SIGINT) \
                        from None
                if not isinstance(err, EXPECTED_ERRORS):
                    raise
                message = " ".join(str(err).split()) or type(err).__name__
                raise CommandError(prog, message) from err

    return wrapper


def note(message: str) -> None:
    """A remark for the user on stderr (stdout carries the command's result)."""
    click.echo(f"note: {message}", err=True)


def model_options(command):
    """--num-heads and --config: configuration fields that a checkpoint without metadata
    cannot tell from its shapes, for every command that loads a checkpoint. The command gets
    `num_heads` and `config_items`; `given_fields` turns them into load_checkpoint's fields."""
    command = click.option(
        "--config", "config_items", multiple=True, metavar="KEY=VALUE,...",
        help="Model configuration fields the checkpoint cannot tell (no ivit-tvm metadata), "
             "e.g. num_heads=4 or window_size=7; a list as num_heads=3,6,12,24. Checked "
             "against the configuration and the file's shapes.")(command)
    return click.option(
        "--num-heads", default=None, metavar="N|H1,H2,...",
        help="Attention heads (one per stage for Swin), for a checkpoint without ivit-tvm "
             "metadata: its shapes do not tell the head count.")(command)


def given_fields(num_heads: str | None, config_items: tuple[str, ...]) -> dict[str, str]:
    """{field: value text} from --config KEY=VALUE,... (repeatable) and --num-heads; a value
    may hold commas (num_heads=3,6,12,24): a piece without '=' continues the value before."""
    fields: dict[str, str] = {}
    for item in config_items:
        pairs: list[list[str]] = []
        for piece in item.split(","):
            if "=" in piece:
                key, _, value = piece.partition("=")
                pairs.append([key.strip(), value.strip()])
            elif pairs and piece.strip():
                pairs[-1][1] += "," + piece.strip()
            else:
                raise ValueError(f"--config {item!r}: write KEY=VALUE[,KEY=VALUE...], e.g. "
                                 "--config num_heads=4")
        for key, value in pairs:
            if not key or not value:
                raise ValueError(f"--config {item!r}: '{key}={value}' needs a key and a value")
            if fields.get(key, value) != value:
                raise ValueError(f"--config gives {key} twice ({fields[key]} and {value}); "
                                 "give it once")
            fields[key] = value
    if num_heads is not None:
        if fields.get("num_heads", num_heads) != num_heads:
            raise ValueError(f"--num-heads {num_heads} and --config num_heads="
                             f"{fields['num_heads']} disagree; give one")
        fields["num_heads"] = num_heads
    return fields


@contextlib.contextmanager
def announced_assumptions():
    """While inside: a configuration field that load_checkpoint took from a convention (an
    AssumedConfigWarning) is one `PROG: note: ...` line on stderr naming the option that
    gives it; other warnings are shown as usual."""
    import warnings

    from ..checkpoint import AssumedConfigWarning

    prog = click.get_current_context().command.name
    with warnings.catch_warnings():
        warnings.simplefilter("always", AssumedConfigWarning)
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if not isinstance(message, AssumedConfigWarning):
                return shown(message, category, *args, **kwargs)
            how = ("--num-heads" if message.field == "num_heads"
                   else f"--config {message.field}=VALUE")
            click.echo(f"{prog}: note: {message.text(how)}", err=True)
            return None

        warnings.showwarning = show
        yield


def softmax_bits_option(help_text: str):
    """--softmax-bits 16|8 (ivit_tvm.models.precision), passed on as an int or None."""
    return click.option(
        "--softmax-bits", type=click.Choice(["16", "8"]), default=None, help=help_text,
        callback=lambda _ctx, _param, value: None if value is None else int(value))
