"""What each CUDA kernel of a model compiles to, without a GPU: SASS instruction mix,
registers, stack frame and shared memory per kernel (issue: CUDA on int8 tensor cores).

    python -m ivit_tvm.benchmarks.cuda_sass deit_small --depth 1 --arch sm_90 [--out FILE.md]

The model is random and calibrated on random images (the kernels do not depend on weight
values), lowered as ivit-compile lowers it (dynamic batch unless --batch), built with
build_cuda, compiled with nvcc; SASS from cuobjdump (toolkit.find_cuda_tool: Triton ships
it). Reshape kernels (compiled, never launched: the VM runs reshapes as views) are left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

REPORTED = ("IMMA", "LDSM", "LDGSTS", "IDP", "LDG", "STG", "LDS", "STS", "SHFL", "LDL", "STL",
            "ISETP", "SEL", "IMAD", "BRA")


def kernel_table(name: str, arch: str, batch: int | None = None, **overrides) -> list[dict]:
    """One row per launched kernel of `name` (models.model_config with `overrides`)."""
    from ivit_tvm.schedules.backend import make_target
    from ivit_tvm.schedules.cuda.build import build_cuda
    from ivit_tvm.schedules.cuda.inspect import cuda_source, parse_ptxas_resources, sass_opcodes
    from ivit_tvm.schedules.cuda.toolkit import compile_cubin_verbose

    from ivit_tvm.compile import apply_graph_passes, lower_model
    from ivit_tvm.models import model_config
    from ivit_tvm.ptq import random_calibrated

    info = make_target("cuda", arch=arch)
    model = random_calibrated(model_config(name, **overrides), seed=0)
    mod = apply_graph_passes(lower_model(model, info, batch=batch)).mod
    cubin, _, log = compile_cubin_verbose(cuda_source(build_cuda(mod, info)), arch)
    resources = parse_ptxas_resources(log)
    rows = []
    for kernel, opcodes in sorted(sass_opcodes(cubin).items()):
        if re.fullmatch(r"reshape\d*_kernel", kernel):
            continue
        base: dict[str, int] = {}  # opcode without its modifiers ("IMMA.16832.S8.S8": IMMA)
        for opcode, count in opcodes.items():
            name = opcode.split(".")[0]
            base[name] = base.get(name, 0) + count
        usage = resources.get(kernel)
        rows.append({"kernel": kernel, "total": sum(opcodes.values()), "opcodes": base,
                     "registers": usage.registers if usage else None,
                     "stack_bytes": usage.stack_bytes if usage else None,
                     "shared_bytes": usage.shared_bytes if usage else None})
    return rows


def markdown(rows: list[dict], title: str) -> str:
    head = ["kernel", "SASS", "regs", "stack B", "smem B", *REPORTED]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [f"`{row['kernel']}`", row["total"], row["registers"], row["stack_bytes"],
                 row["shared_bytes"], *(row["opcodes"].get(op, 0) for op in REPORTED)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("model")
@click.option("--arch", default="sm_90", show_default=True, help="CUDA arch to compile for.")
@click.option("--depth", type=int, default=None,
              help="Transformer blocks (DeiT), fewer than the model's for a quick table.")
@click.option("--batch", type=int, default=None,
              help="Fixed batch (default: dynamic, as ivit-compile builds by default).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the Markdown table here (atomically) as well as printing it.")
def main(model, arch, depth, batch, out):
    """Per-kernel SASS mix, registers, stack and shared memory of MODEL built for CUDA."""
    overrides = {} if depth is None else {"depth": depth}
    try:
        rows = kernel_table(model, arch, batch, **overrides)
    except (ValueError, FileNotFoundError) as error:  # unknown model or arch, no toolkit
        raise click.ClickException(str(error)) from error
    shape = f"depth {depth}, " if depth else ""
    text = markdown(rows, f"{model} ({shape}batch {batch or 'dynamic'}) on {arch}")
    click.echo(text)
    if out is not None:
        partial = out.with_name(out.name + ".partial")
        partial.write_text(text)
        partial.replace(out)


if __name__ == "__main__":
    main()
