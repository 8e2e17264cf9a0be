"""ivit-demo (`make demo`, `python -m ivit_tvm.cli.demo`): the bundled digits model, compiled
for this CPU and checked against the PyTorch integer reference (ivit_tvm.demo does the work)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from ..demo import run_demo
from .common import CONTEXT, reports_errors


@click.command("ivit-demo", context_settings=CONTEXT)
@click.option("--subset", type=click.IntRange(min=1), default=None,
              help="Use only the first N test images. [default: all 450]")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the artifact to this new folder and keep it. [default: a temporary "
                   "folder, removed afterwards]")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Batch size of the accuracy and throughput runs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def demo_cmd(subset, out, batch_size, quiet):
    """Compile the bundled digits model (QAT, integer-only DeiT) for this CPU, run the digits
    test split through it and print FP / integer-reference / ivit-tvm accuracy, agreement and
    latency. Exits with status 1 unless the artifact's logits equal the reference's."""
    with tempfile.TemporaryDirectory(prefix="ivit-demo-") as tmp:
        result = run_demo(out or Path(tmp) / "digits.ivit", subset, batch_size,
                          progress=not quiet, log=lambda msg: click.echo(msg, err=True))
    click.echo(result.table())
    if not result.ok:
        raise ValueError(f"the artifact disagrees with the PyTorch integer reference on "
                         f"{result.images - result.bit_exact} of {result.images} images")


if __name__ == "__main__":
    demo_cmd(prog_name="ivit-demo")
