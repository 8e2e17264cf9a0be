"""ivit-tune: MetaSchedule searches over a model's GEMM kernels; ivit-compile applies the records.

    ivit-tune deit_s.pth --target llvm --trials 64
    ivit-tune deit_s.pth --target llvm --rpc-tracker 10.0.0.5:9190 --rpc-key znver4 --mcpu znver4

The kernels are the model's dense GEMMs (with their fused bias/requantize epilogues) and
attention matmuls at a fixed batch (schedules.tuning.tasks). The hand-written schedule of
each is measured alike, and the best record of each kernel that beats it goes to the
package's database for the target (schedules/tuned/<kind>-<cpu>/) or to --database DIR;
`ivit-compile --batch N` for that target then uses them in place of the hand-written schedules
(its manifest lists them under "tuned_kernels").
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import CONTEXT, announced_assumptions, given_fields, model_options, reports_errors


def model_tasks(checkpoint: Path, info, batch: int, name: str | None = None,
                given: dict | None = None, kinds: tuple[str, ...] | None = None) -> list:
    """The tuning tasks of a checkpoint's model at `batch` for the target `info`."""
    from ..checkpoint import load_checkpoint
    from ..compile import apply_graph_passes, lower_model
    from ..schedules.tuning.tasks import KINDS, extract_tasks

    model, _ = load_checkpoint(checkpoint, name=name, **(given or {}))
    mod = apply_graph_passes(lower_model(model, info, batch=batch)).mod
    return extract_tasks(mod, info, kinds or KINDS)


def _micros(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f}"


@click.command("ivit-tune", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", "target_kind", type=click.Choice(["llvm"]), required=True,
              help="llvm: x86 CPUs (the only target tuned so far; CUDA keeps its rules).")
@click.option("--mcpu", default=None, metavar="CPU",
              help="LLVM CPU name of the machines that measure (and will run the model), e.g. "
                   "znver4, cascadelake. Default: this host's CPU. Names the database folder.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Batch size to tune for. Records apply to `ivit-compile --batch N` with the "
                   "same N (kernels of a dynamic batch have no fixed shape to measure).")
@click.option("--trials", default=64, show_default=True, type=click.IntRange(min=1),
              help="Candidates measured per kernel.")
@click.option("--search", default="evolutionary", show_default=True,
              type=click.Choice(["evolutionary", "random"]),
              help="evolutionary: MetaSchedule's search guided by its XGBoost cost model. "
                   "random: random schedules from the same space, no cost model (cheap, for a "
                   "handful of trials).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["dense", "matmul"]),
              help="Tune only these kernel kinds (repeatable): dense GEMMs with their "
                   "epilogues, attention matmuls. Default: both.")
@click.option("--only", multiple=True, metavar="TEXT",
              help="Tune only the kernel named TEXT (see --list), or else those whose name "
                   "contains TEXT (repeatable).")
@click.option("--keep-slower", is_flag=True,
              help="Keep each kernel's best record even where the hand-written schedule "
                   "measured faster (default: only records that beat it are kept).")
@click.option("--list", "list_only", is_flag=True,
              help="Print the kernels and their names, tune nothing.")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Measure on the devices registered with this RPC tracker (python -m "
                   "tvm.exec.rpc_tracker) instead of this machine; needs --rpc-key.")
@click.option("--rpc-key", default=None, metavar="KEY",
              help="The key the RPC servers registered under (python -m tvm.exec.rpc_server "
                   "--tracker HOST:PORT --key KEY).")
@click.option("--database", "database", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Folder of the tuning database to add the records to. Default: the "
                   "package's folder for the target (schedules/tuned/<kind>-<cpu>/), which "
                   "ivit-compile reads.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads of the search and builder processes on this machine.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the search, for repeatable runs.")
@click.option("--model", "name", default=None, metavar="NAME",
              help="Model name when the checkpoint has no ivit-tvm metadata (see ivit-compile).")
@model_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def tune_cmd(checkpoint, target_kind, mcpu, batch, trials, search, kinds, only, keep_slower,
             list_only, rpc_tracker, rpc_key, database, threads, seed, name, num_heads,
             config_items, quiet):
    """Tune the GEMM kernels of an I-ViT CHECKPOINT with TVM's MetaSchedule, measuring on
    this machine or through an RPC tracker on the devices you deploy to. `ivit-compile
    --batch N` then builds the tuned kernels from the database (hand-written schedules for
    the rest); the results stay bit-exact."""
    from tqdm import tqdm

    from ..schedules.backend import make_target
    from ..schedules.tuning.database import shipped_folder
    from ..schedules.tuning.search import RPCSettings, tune
    from ..schedules.tuning.tasks import select_tasks

    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError("--rpc-tracker and --rpc-key go together: give both or neither")
    rpc = RPCSettings.parse(rpc_tracker, rpc_key) if rpc_tracker else None
    info = make_target(target_kind, mcpu=mcpu)
    folder = database or shipped_folder(info.target)
    with announced_assumptions():
        tasks = model_tasks(checkpoint, info, batch, name, given_fields(num_heads, config_items),
                            tuple(kinds) or None)
    tasks = select_tasks(tasks, tuple(only))
    if list_only:
        for task in tasks:
            click.echo(f"{task.name}  (x{task.weight}: {', '.join(task.primfuncs)})")
        return
    bar = tqdm(total=trials * len(tasks), desc="ivit-tune", unit="trial", disable=quiet)
    try:
        results = tune(tasks, info, folder, trials, rpc=rpc, threads=threads, seed=seed,
                       search=search, keep_slower=keep_slower,
                       on_measured=lambda _task, count: bar.update(count))
    finally:
        bar.close()
    click.echo(f"{'kernel':<28} {'count':>5} {'trials':>6} {'hand us':>9} {'tuned us':>9} "
               f"{'kept':>4}")
    for result in results:
        click.echo(f"{result.task.name:<28} {result.task.weight:>5} {result.trials:>6} "
                   f"{_micros(result.hand_s):>9} {_micros(result.best_s):>9} "
                   f"{'yes' if result.kept else 'no':>4}")
    kept = sum(r.kept for r in results)
    where = f"tracker {rpc.host}:{rpc.port} key {rpc.key}" if rpc else "this machine"
    use = (f"compile_checkpoint(..., batch={batch}, tuning_db={str(folder)!r}) uses them"
           if database else f"`ivit-compile --target llvm --batch {batch}"
           f"{' --mcpu ' + mcpu if mcpu else ''}` uses them")
    if not kept:
        click.echo(f"kept no record (measured on {where}): the hand-written schedules were "
                   "faster; more --trials may find better ones")
        return
    click.echo(f"wrote {kept} record(s) to {folder} (measured on {where}); {use}")


if __name__ == "__main__":
    tune_cmd()
