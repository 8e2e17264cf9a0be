"""ivit-eval: top-1/top-5 of a checkpoint on an ImageFolder, three ways (float model, PyTorch
integer reference, compiled artifact), and whether the artifact's logits equal the
reference's bit for bit."""

from __future__ import annotations

import json
import tempfile
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

FP, REFERENCE, ARTIFACT = "FP (timm float)", "integer reference", "ivit-tvm artifact"


@click.command("ivit-eval", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="ImageFolder root: one subfolder per class, sorted names = label index "
                   "(e.g. ImageNet's val/ with its 1000 synset folders). Images are "
                   "preprocessed as timm evaluates (resize to img_size/0.875, center crop, "
                   "ImageNet mean/std).")
@click.option("--artifact", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A compiled artifact of CHECKPOINT (from ivit-compile). Default: compile "
                   "one for --target into a temporary folder.")
@click.option("--target", "target_kind", type=click.Choice(["llvm", "cuda"]), default="llvm",
              show_default=True, help="Target to compile for when no --artifact is given.")
@click.option("--no-artifact", is_flag=True,
              help="Skip the compiled artifact: evaluate the float model and the integer "
                   "reference only.")
@click.option("--fp-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Float timm weights for the FP row (e.g. the ones PTQ/QAT started from). "
                   "Default: the float parameters stored in CHECKPOINT.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--reference-every", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N",
              help="Run the PyTorch models (the float model and the integer reference) on every "
                   "N-th batch only; the artifact runs on every batch and is checked bit for "
                   "bit against the reference on the sampled ones. With N > 1 a large "
                   "evaluation takes about the artifact's time; the table gives each row's "
                   "image count.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate a seeded random subset of this many images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --limit's subset.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes decoding images.")
@click.option("--model", "name", default=None, metavar="NAME",
              help="Model name when the checkpoint has no ivit-tvm metadata (see ivit-compile).")
@model_options
@softmax_bits_option(
              "Evaluate the model with Shiftmax at this width (ivit-compile's fast mode: "
                   "8) instead of as trained: the integer reference and the compiled artifact "
                   "use it, the float row does not, so the accuracy cost reads off the table. "
                   "Default: the --artifact's recorded width, else as trained.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the results to this JSON file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@reports_errors
def eval_cmd(checkpoint, data_dir, artifact, target_kind, no_artifact, fp_weights, batch_size,
             reference_every, limit, seed, workers, name, num_heads, config_items, softmax_bits,
             json_out, quiet):
    """Evaluate CHECKPOINT (an I-ViT checkpoint) on the images under --data.

    Prints top-1/top-5 of the float model, the PyTorch integer reference and the compiled
    artifact, and the artifact's agreement with the reference; exits with status 1 if any
    image's int32 logits differ between the two.
    """
    from ..checkpoint import load_checkpoint
    from ..evaluate import fp_predictor, image_folder, load_fp_model, reference_predictor
    from ..models.precision import set_softmax_bits

    with announced_assumptions():
        model, info = load_checkpoint(checkpoint, name=name,
                                      **given_fields(num_heads, config_items))
    config = info.config
    if artifact is not None and not no_artifact:
        softmax_bits = _artifact_softmax_bits(artifact, softmax_bits)
    if softmax_bits is not None and set_softmax_bits(model, softmax_bits) != softmax_bits:
        click.echo(f"ivit-eval: note: Shiftmax at {softmax_bits} bits, not as trained: the "
                   "integer reference and the artifact use that width, the float model does "
                   "not", err=True)
    dataset = image_folder(data_dir, config.img_size, config.num_classes, limit, seed)
    predictors = {FP: fp_predictor(load_fp_model(model, fp_weights)),
                  REFERENCE: reference_predictor(model)}
    with tempfile.TemporaryDirectory(prefix="ivit-eval-") as tmp:
        if not no_artifact:
            path = artifact or _compile(model, target_kind, Path(tmp) / "model.ivit",
                                        checkpoint, quiet)
            predictors[ARTIFACT] = _artifact_predictor(path, config, checkpoint)
        result = _run(dataset, predictors, batch_size, workers, quiet, not no_artifact,
                      reference_every)
    click.echo(f"{checkpoint} on {data_dir}: {result.images} images")
    click.echo(result.table())
    if json_out is not None:
        json_out.write_text(json.dumps({"checkpoint": str(checkpoint), "data": str(data_dir),
                                        **result.as_dict()}, indent=1) + "\n")
    if result.compared and result.bit_exact != result.compared:
        raise ValueError(f"the artifact's logits differ from the integer reference on "
                         f"{result.compared - result.bit_exact} of {result.compared} images; "
                         "please report this with the checkpoint and artifact")


def _compile(model, target_kind: str, out: Path, checkpoint: Path, quiet: bool) -> Path:
    from ..compile import compile_model, make_target
    from ..manifest import file_sha256

    compile_model(model, make_target(target_kind), out, source=str(checkpoint.resolve()),
                  progress=not quiet, checkpoint_sha256=file_sha256(checkpoint))
    return out


def _artifact_softmax_bits(path: Path, asked: int | None) -> int | None:
    """The Shiftmax width the artifact was compiled with (None: as trained, or an artifact
    from before --softmax-bits); ArtifactError when --softmax-bits asks for another, or the
    manifest records a width that is none."""
    from ..artifact import ArtifactError, read_manifest
    from ..models.precision import SOFTMAX_BITS

    recorded = read_manifest(path).get("softmax_bits")
    if recorded is not None and recorded not in SOFTMAX_BITS:
        raise ArtifactError(f"{path}: its manifest records softmax_bits {recorded!r}, not one of "
                            f"{', '.join(map(str, SOFTMAX_BITS))}; recompile the artifact")
    if asked is not None and recorded is not None and asked != recorded:
        raise ArtifactError(f"{path}: compiled with Shiftmax at {recorded} bits, but "
                            f"--softmax-bits {asked} was given; drop --softmax-bits (the "
                            "artifact's width is used) or compile another artifact")
    return asked if recorded is None else recorded


def _artifact_predictor(path: Path, config, checkpoint: Path):
    from ..artifact import ArtifactError, read_manifest
    from ..evaluate import artifact_predictor
    from ..manifest import file_sha256
    from ..runtime import load

    meta = read_manifest(path)
    compiled_sha256, compiled_config = meta["checkpoint_sha256"], meta["config"]
    if compiled_sha256 is not None and compiled_sha256 != file_sha256(checkpoint):
        raise ArtifactError(f"{path}: compiled from another checkpoint (SHA-256 "
                            f"{compiled_sha256[:16]}..., {meta.get('source') or 'unknown'}) "
                            f"than {checkpoint}; pass the artifact compiled from this "
                            "checkpoint, or none")
    if compiled_config != config.to_dict():
        raise ArtifactError(f"{path}: compiled from another model ({compiled_config}) than the "
                            f"checkpoint ({config.to_dict()}); pass the artifact compiled from "
                            "this checkpoint, or none")
    return artifact_predictor(load(path))


def _run(dataset, predictors, batch_size: int, workers: int, quiet: bool, compare: bool,
         reference_every: int = 1):
    from ..evaluate import evaluate, loader

    batches = loader(dataset, batch_size, workers)
    return evaluate(batches, predictors, compare=(REFERENCE, ARTIFACT) if compare else None,
                    total=len(batches), progress=not quiet,
                    every={FP: reference_every, REFERENCE: reference_every})
