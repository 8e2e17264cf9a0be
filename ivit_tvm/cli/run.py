"""ivit-run: run a compiled artifact on images with the TVM runtime alone."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .common import CONTEXT, reports_errors


def read_images(source: str, shape: tuple, batch: int | None, seed: int) -> np.ndarray:
    """A .npy file of float32 NCHW images, or 'random' standard-normal images (`batch` of them;
    default: the artifact's batch when it is fixed, else 1)."""
    if source == "random":
        fixed = shape[0] if shape[0] != -1 else None
        if batch is not None and fixed is not None and batch != fixed:
            raise ValueError(f"--batch {batch}: the artifact was compiled for batch {fixed}; "
                             f"pass --batch {fixed} or recompile with another --batch")
        batch = batch or fixed or 1
        rng = np.random.default_rng(seed)
        return rng.standard_normal((batch, *shape[1:]), dtype=np.float32)
    path = Path(source)
    if path.suffix != ".npy" or not path.is_file():
        raise ValueError(f"{source}: give a .npy file of float32 (B, C, H, W) images "
                         "(preprocessed) or 'random'")
    array = np.load(path, allow_pickle=False)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{source}: holds {array.dtype} values; ivit-run takes preprocessed "
                         "float32 (B, C, H, W) images: normalise the pixels first (the model's "
                         "mean and std), as for the PyTorch model")
    return array


@click.command("ivit-run", context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", default="random", show_default=True, metavar="FILE.npy|random",
              help="Preprocessed float32 NCHW images in a .npy file, or random images.")
@click.option("--batch", default=None, type=click.IntRange(min=1),
              help="Number of random images (with --images random). Default: the artifact's "
                   "batch when compiled for a fixed one, else 1.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random images.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1),
              help="How many classes to print per image.")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the float32 logits to this .npy file.")
@reports_errors
def run_cmd(artifact, images, batch, seed, top, save):
    """Run ARTIFACT (from ivit-compile) and print each image's top classes and logits."""
    from ..runtime import InputError, load

    model = load(artifact)
    array = read_images(images, model.input_shape, batch, seed)
    try:
        logits = model.run(array)
    except InputError as err:
        raise InputError(f"{images}: {err}") from None
    for i, row in enumerate(logits):
        best = np.argsort(-row)[:top]
        ranked = ", ".join(f"{c}:{row[c]:.3f}" for c in best)
        click.echo(f"image {i}: {ranked}")
    if save is not None:
        np.save(save, logits)
