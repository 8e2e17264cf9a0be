"""ivit-compile: an I-ViT checkpoint -> a deployable artifact folder."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    CONTEXT,
    announced_assumptions,
    given_fields,
    model_options,
    reports_errors,
    softmax_bits_option,
)


def parse_batch(value: str) -> int | None:
    """'dynamic' -> None (symbolic batch), else a positive int."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"'{value}': give a positive integer or 'dynamic'")
    return int(value)


@click.command("ivit-compile", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", "target_kind", type=click.Choice(["llvm", "cuda"]), required=True,
              help="llvm: a native library for --mcpu's CPU; the int8 GEMMs use AVX-512 VNNI "
                   "(vpdpbusd/vpdpwssd on zmm), else AVX-VNNI (the same on ymm), else AVX2 "
                   "(vpmaddwd on int16-widened operands), else vectorized loops. cuda: NVIDIA "
                   "GPU kernels for --arch: on sm_80 and newer the dense GEMMs whose N and K fit "
                   "a tile and both attention matmuls run on int8 tensor cores (mma.sync "
                   "m16n8k32, ldmatrix, cp.async; 16-bit probs @ V as a high- and a low-byte "
                   "GEMM, .s8 and .u8); the rest (sm_61-sm_75, the classifier head) on dp4a, "
                   "16-bit probs @ V below sm_80 a scalar loop; row kernels a warp per row. "
                   "Every form is bit-exact with the PyTorch reference.")
@click.option("--arch", default=None, metavar="sm_XX",
              help="CUDA architecture, e.g. sm_80 (A100), sm_86, sm_89, sm_90 (H100/H200). "
                   "Default: the local GPU's; required on a machine without one. Ignored for "
                   "llvm.")
@click.option("--mcpu", default=None, metavar="CPU",
              help="LLVM CPU name for --target llvm, e.g. cascadelake, znver4. Default: the "
                   "host CPU.")
@click.option("--batch", default="dynamic", show_default=True, metavar="N|dynamic",
              help="Batch size the artifact accepts: a fixed N, or 'dynamic' for any batch "
                   "from one artifact. On cuda a fixed N runs the inference as one CUDA graph.")
@click.option("--model", "name", default=None, metavar="NAME",
              help="Model name (e.g. deit_small) when the checkpoint has no ivit-tvm metadata "
                   "and its configuration cannot be inferred from keys and shapes alone "
                   "(the number of heads).")
@model_options
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Artifact folder to write (model.so + ivit_artifact.json). Written "
                   "atomically: a failed compile leaves nothing behind.")
@click.option("--tuning-db", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, metavar="DIR",
              help="A tuning database written by ivit-tune: kernels it has a record for (at this "
                   "--batch) take the tuned schedule, the rest the hand-written ones. Default: "
                   "the database shipped in the package for this target, if any.")
@softmax_bits_option(
              "Opt-in fast mode: 8 makes every Shiftmax emit 8-bit probabilities, so "
                   "probs @ V is one int8 x int8 GEMM instead of int16 x int8. This is another "
                   "model than the checkpoint's (DeiT/ViT train with 16 bits; Swin already uses "
                   "8): its logits differ and accuracy can drop (README). The artifact records "
                   "the width and ivit-eval checks it against the reference at that width. "
                   "Default: as trained.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def compile_cmd(checkpoint, target_kind, arch, mcpu, batch, name, num_heads, config_items, out,
                tuning_db, softmax_bits, force, quiet):
    """Compile an I-ViT CHECKPOINT (from ivit-quantize or I-ViT's own training code) into
    integer-only kernels. The artifact runs with `ivit-run` or `ivit_tvm.load(OUT)` and the
    TVM runtime alone; its logits equal the PyTorch integer reference bit for bit."""
    from ..compile import compile_checkpoint

    given = given_fields(num_heads, config_items)
    with announced_assumptions():
        report = compile_checkpoint(checkpoint, target_kind, out, arch=arch, mcpu=mcpu,
                                    batch=parse_batch(batch), force=force, name=name,
                                    progress=not quiet, given=given, tuning_db=tuning_db,
                                    softmax_bits=softmax_bits)
    if softmax_bits is not None and report.trained_softmax_bits != softmax_bits:
        click.echo(f"ivit-compile: note: Shiftmax emits {softmax_bits}-bit probabilities "
                   f"(--softmax-bits; the checkpoint's model uses {report.trained_softmax_bits}): "
                   "the artifact's logits follow the reference at that width, not the trained "
                   "model's", err=True)
    size_mb = report.library_bytes / 2**20
    click.echo(f"wrote {report.out} ({size_mb:.1f} MiB, {report.total_seconds:.1f} s): "
               f"{report.contents}")
