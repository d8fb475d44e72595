"""Images out of a trained model: `sample` writes generated images for the audit to read, and
image grids show them to a person (workdir/grids, TensorBoard).

`sample` writes a family's generated images to `workdir/samples/*.npz` (key `images`, in the
data's own range and dtype), in chunks that an interrupted run keeps and resumes.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import TYPE_CHECKING

from absl import logging
import jax
import numpy as np

from memjax import parallel
from memjax.data import pipeline
from memjax.train import checkpoints
from memjax.train import inputs
from memjax.train import state as state_lib

if TYPE_CHECKING:  # Configs are only read here; a bare machine may lack ml_collections.
  import ml_collections

GRIDS = "grids"
SAMPLES = "samples"
_SAMPLE_FILE = "samples_{:05d}.npz"
_GRID_IMAGES = 64  # images in the grid drawn of a sample run


def image_grid(images: np.ndarray, min_cell: int = 64) -> np.ndarray:
  """A uint8 gray grid of images in [-1, 1], (N, H, W, C) or (N, D, H, W, C).

  Shows channel 0 (the T1 of MNI152 and BraTS), the middle axial slice of volumes, in a
  near-square grid with 2-pixel gaps; small images are enlarged to `min_cell` pixels.
  """
  images = np.asarray(images, np.float32)
  if images.ndim == 5:
    images = images[:, images.shape[1] // 2]
  images = images[..., 0]
  scale = max(1, math.ceil(min_cell / max(images.shape[1:])))
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  gap = 2
  grid = np.zeros((rows * (h + gap) + gap, cols * (w + gap) + gap), np.uint8)
  pixels = pipeline.from_unit_range(images, np.uint8)
  for i in range(n):
    r, c = divmod(i, cols)
    grid[gap + r * (h + gap):gap + r * (h + gap) + h,
         gap + c * (w + gap):gap + c * (w + gap) + w] = pixels[i]
  return grid


def save_grid(path: pathlib.Path, images: np.ndarray) -> None:
  """`image_grid(images)` as a PNG at `path`, written under a temporary name and renamed."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + ".tmp")
  Image.fromarray(image_grid(images)).save(temporary, format="PNG")
  os.replace(temporary, path)


def sample(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
           trainer: state_lib.Trainer, *, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Writes `config.num_samples` generated images to workdir/samples/samples_NNNNN.npz.

  Each file holds a chunk of `config.sample_batch_size` images under `images`, in the training
  data's range, dtype and shape (uint8 0-255 for 8-bit data; a model trained with
  data.downsample=k has each pixel repeated k^d times), with the `seed` and the checkpoint `step`.
  Chunk i is generated from fold_in(sampling key, i), split by rows over the mesh, with the
  trainer's sampling weights (the EMA for DDPM). A chunk already written for the same step and
  seed is kept, so an interrupted run resumes; files of another step or seed are replaced. The
  first 64 images are also drawn as workdir/grids/samples_step_N.png (outside samples/, which
  the audit reads as a folder of one image shape).

  Returns:
    The samples folder.
  """
  workdir = pathlib.Path(workdir)
  compiled, state, rngs, step, meta = checkpoints.restore(config, workdir, trainer, mesh=mesh)
  count = int(config.num_samples)
  if count <= 0:
    raise ValueError(f"--config.num_samples must be positive, not {count}")
  devices = parallel.mesh_size(compiled.mesh)
  chunk = max(1, min(int(config.get("sample_batch_size", 64)), count))
  chunk += -chunk % devices
  num_chunks = -(-count // chunk)
  folder = workdir / SAMPLES
  primary = jax.process_index() == 0
  seed = int(config.seed)
  if primary:
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder, {_SAMPLE_FILE.format(i) for i in range(num_chunks)}, step, seed)
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  grid = []
  for i in tqdm(range(num_chunks), desc=f"sample {trainer.name} (step {step})", unit="chunk",
                disable=not (primary and config.get("progress", True)), dynamic_ncols=True):
    path = folder / _SAMPLE_FILE.format(i)
    size = min(chunk, count - i * chunk)
    if path.exists() and _chunk_matches(path, step, seed, size):
      if len(grid) < _GRID_IMAGES:
        grid.append(_stored_unit_range(path))
      continue
    images = compiled.generate(state, rngs, jax.random.fold_in(compiled.keys.sample, i), chunk)
    images = inputs.upsample_to(parallel.to_host(images)[:size], compiled.downsample_factor,
                                meta["data_shape"])
    if len(grid) < _GRID_IMAGES:
      grid.append(images[:_GRID_IMAGES])
    if primary:
      _write_chunk(path, pipeline.from_unit_range(images, np.dtype(meta["image_dtype"])), seed, step)
  if primary:
    save_grid(workdir / GRIDS / f"samples_step_{step:08d}.png",
              np.concatenate(grid)[:_GRID_IMAGES])
    logging.info("%d samples of step %d written to %s", count, step, folder)
  return folder


def _remove_stale(folder: pathlib.Path, wanted: set[str], step: int, seed: int) -> None:
  """Removes chunk files this run will not write, of another step or seed, and temporaries."""
  for stale in [*folder.glob("samples_*.npz"), *folder.glob(".samples_*.tmp")]:
    if stale.name not in wanted or not _chunk_matches(stale, step, seed):
      stale.unlink()


def _stored_unit_range(path: pathlib.Path) -> np.ndarray:
  """The first images of a written chunk, back in [-1, 1] for the grid."""
  from memjax.data import pipeline  # pylint: disable=g-import-not-at-top
  with np.load(path) as stored:
    return pipeline.to_unit_range(stored["images"][:_GRID_IMAGES])


def _write_chunk(path: pathlib.Path, images: np.ndarray, seed: int, step: int) -> None:
  """One chunk, under a hidden name (which the audit skips) renamed when complete."""
  temporary = path.parent / f".{path.name}.tmp"
  with open(temporary, "wb") as f:
    np.savez(f, images=images, seed=np.int64(seed), step=np.int64(step))
  os.replace(temporary, path)


def _chunk_matches(path: pathlib.Path, step: int, seed: int, size: int | None = None) -> bool:
  try:
    with np.load(path) as stored:
      return (int(stored["step"]) == step and int(stored["seed"]) == seed and
              (size is None or len(stored["images"]) == size))
  except (OSError, ValueError, KeyError):
    return False
