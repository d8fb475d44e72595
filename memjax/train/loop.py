"""The training loop that every model family shares: mesh, steps, EMA, checkpoints, metrics.

A model family (DDPM in `ddpm.py`, later StyleGAN2 and the contrastive encoder) describes itself
with a `Trainer`: how to build its state (an NNX module holding its models, optimizers, EMA
weights and a `step` counter, e.g. `TrainState`), one training step on a batch, and optionally
how to generate images. `train` does the rest, the same way for every family:

* a one-axis `data` mesh (`memjax.parallel.data_mesh`): every global batch is split over it by
  rows, the state is replicated, and one jit-compiled step (state donated) runs per batch;
* randomness from `jax.random.key(config.seed)` alone, split into an init, a training and two
  sampling keys; step s uses `fold_in(training key, s)`, so a resumed run draws the same noise;
* an orbax `CheckpointManager` in `workdir/checkpoints` (async, atomic, the last
  `keep_checkpoints` kept) that saves the state, the input pipeline's position (JSON) and what
  sampling needs to know about the data (JSON). Re-running the same command resumes from the
  last complete checkpoint and sees the batches an uninterrupted run would have seen;
* TensorBoard scalars in `workdir/events` (each metric, learning rate, steps/s, images/s), a
  progress bar, and image grids in `workdir/grids` every `sample_every_steps`.

`sample` writes a family's generated images to `workdir/samples/*.npz` (key `images`, in the
data's own range and dtype) for the audit to read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import json
import logging as std_logging
import math
import os
import pathlib
import time
from typing import TYPE_CHECKING, Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import parallel

if TYPE_CHECKING:  # Configs are only read here; a bare machine may lack ml_collections.
  import ml_collections

# The input pipeline (grain, array_record), TensorBoard, tqdm and orbax are imported where they
# are used, so that building and stepping a `CompiledTrainer` on synthetic batches needs none.

CHECKPOINTS = "checkpoints"
COMPILATION_CACHE = ".xla_cache"  # JAX's persistent compilation cache, inside the work dir
CONFIG_FILE = "config.json"  # the run's config, beside its checkpoints
EVENTS = "events"
GRIDS = "grids"
SAMPLES = "samples"
_SAMPLE_FILE = "samples_{:05d}.npz"

# ----------------------------------------------------------------------------------------------
# What a model family provides.


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A model family, as the shared loop sees it.

  Attributes:
    name: the family, e.g. "ddpm"; stored in checkpoints and checked on resume.
    init_state: (key, image_shape) -> the training state, an NNX module with an integer
      `nnx.Variable` named `step` (the loop advances it by one per batch) and whatever else
      the family trains: models, `nnx.Optimizer`s, EMA copies (see `TrainState`). image_shape
      is one example's (H, W, C) or (D, H, W, C).
    train_step: (state, batch, key) -> {name: scalar}. One update of `state` in place, on a
      batch dict of global arrays (images in [-1, 1]) with this step's key. It runs inside the
      loop's jit; the scalars are averaged between logs and written to TensorBoard.
    generate: (state, key, shape, sharding) -> images in [-1, 1] of `shape`, for grids and the
      `sample` workflow; None when the family makes no images. It runs inside jit; `sharding`
      splits the batch axis over the mesh (constrain large intermediates with it).
    learning_rate: step -> learning rate, for the logs; None to log none.
    features: the data set's features a batch holds; the first is the image.
    variant: step -> a hashable key, for families whose steps differ by step number (StyleGAN2's
      regularizers every 4th and 16th step); train_step is then called with `variant=key` and
      compiled once per key. XLA's CPU backend runs a `lax.cond` branch an order of magnitude
      slower than the same code outside one, so such steps are separate programs instead.
  """
  name: str
  init_state: Callable[[jax.Array, tuple[int, ...]], nnx.Module]
  train_step: Callable[[nnx.Module, dict[str, jax.Array], jax.Array], dict[str, jax.Array]]
  generate: Callable[[nnx.Module, jax.Array, tuple[int, ...], Any], jax.Array] | None = None
  learning_rate: Callable[[int], Any] | None = None
  features: tuple[str, ...] = ("image",)
  variant: Callable[[int], Any] | None = None


class TrainState(nnx.Module):
  """One model, its optimizer, an EMA copy of its weights and the step: what most families train.

  StyleGAN2 holds two of these (generator with EMA, discriminator without) beside one `step`.
  """

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation,
               ema_decay: float = 0.0):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    # The EMA is a whole copy of the model, so that it samples like one.
    self.ema = nnx.clone(model) if ema_decay else None
    self.ema_decay = float(ema_decay)
    self.step = nnx.Variable(jnp.zeros((), jnp.int32))

  def apply_gradients(self, grads: nnx.State) -> None:
    """One optimizer update of the model, then the EMA: ema = d * ema + (1 - d) * weights."""
    self.optimizer.update(self.model, grads)
    if self.ema is not None:
      decay = self.ema_decay
      averaged = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                              nnx.state(self.ema, nnx.Param), nnx.state(self.model, nnx.Param))
      nnx.update(self.ema, averaged)

  @property
  def sampling_model(self) -> nnx.Module:
    """The EMA weights when kept, else the trained ones."""
    return self.model if self.ema is None else self.ema


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(options: ml_collections.ConfigDict) -> jnp.dtype:
  """The models' compute dtype, `options.dtype` (config.model.dtype; float32 when unset).

  Mixed precision: with "bfloat16" the convolutions and matrix products run in bfloat16 while
  parameters, optimizer state, normalization statistics and losses stay float32.
  """
  name = options.get("dtype") or "float32"
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"--config.model.dtype must be one of {COMPUTE_DTYPES}, not {name!r}")
  return jnp.dtype(name)


def learning_rate_schedule(options: ml_collections.ConfigDict,
                           num_train_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_steps`, then constant or a cosine decay to the end.

  options.schedule: "constant" (guided-diffusion) or "cosine" (decays to
  `final_learning_rate_fraction` of the peak at `num_train_steps`, as Dar et al.'s encoder).
  """
  peak = float(options.learning_rate)
  warmup = int(options.get("warmup_steps", 0))
  schedule = options.get("schedule", "constant")
  if schedule == "constant":
    if not warmup:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  if schedule == "cosine":
    final = peak * float(options.get("final_learning_rate_fraction", 0.0))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(num_train_steps, warmup + 1),
                                              end_value=final)
  raise ValueError(f"optimizer.schedule must be 'constant' or 'cosine', not {schedule!r}")


def make_optimizer(options: ml_collections.ConfigDict, num_train_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(W) with the learning-rate schedule, after clipping the global gradient norm.

  options: learning_rate, warmup_steps, schedule, b1, b2, eps, weight_decay, grad_clip_norm
  (0 clips nothing).
  """
  schedule = learning_rate_schedule(options, num_train_steps)
  adam = optax.adamw(schedule, b1=options.get("b1", 0.9), b2=options.get("b2", 0.999),
                     eps=options.get("eps", 1e-8), weight_decay=options.get("weight_decay", 0.0))
  clip = float(options.get("grad_clip_norm", 0.0))
  tx = optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam
  return tx, schedule


# ----------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class TrainingData:
  """A random-access source of example dicts, and its images' shape and dtype."""
  source: Any
  image_shape: tuple[int, ...]  # (H, W, C) or (D, H, W, C): channels always last.
  image_dtype: np.dtype
  description: str


class _ImageExamples:
  """An `ImageSource` (folder, .npy, ...) as examples {"image": (..., C) array}."""

  def __init__(self, images: Any, add_channel: bool):
    self._images = images
    self._add_channel = add_channel

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image = self._images.read(index, index + 1, dtype=None)[0]
    return {"image": image[..., None] if self._add_channel else image}


def open_training_data(options: ml_collections.ConfigDict) -> TrainingData:
  """The training images that `options.source` names.

  options.source: 'tfds:NAME/CONFIG:SPLIT' (a memjax TFDS data set; mni152 is prepared on first
  use since it ships with nilearn, the others need tools/prepare_data.py), or anything
  `memjax.data.sources.open_source` reads (a folder, .npy or .npz file). Folders of 2D images
  are (H, W[, C]); set options.volumes=True for folders of 3D volumes (D, H, W[, C]).
  """
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  spec = options.get("source")
  if not spec:
    raise ValueError("--config.data.source is required: 'tfds:NAME/CONFIG:SPLIT', a folder, or "
                     "a .npy/.npz file of training images")
  if isinstance(spec, str) and spec.startswith("tfds:"):
    return _open_tfds(*sources.parse_tfds_spec(spec), options)
  images = sources.open_source(spec)
  shape = tuple(images.shape)
  add_channel = len(shape) == (3 if options.get("volumes") else 2)
  if add_channel:
    shape = (*shape, 1)
  return TrainingData(_ImageExamples(images, add_channel), shape, np.dtype(images.dtype),
                      images.description)


def _open_tfds(name: str, config: str | None, split: str,
               options: ml_collections.ConfigDict) -> TrainingData:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top,unused-import  (registers memjax's builders)
  from memjax.data import brats, cxr, mni152, tfds_builder

  full_name = name if config is None else f"{name}/{config}"
  description = f"tfds:{full_name}:{split}"
  data_dir = options.get("data_dir") or tfds_builder.default_data_dir()
  try:
    builder = tfds.builder(full_name, data_dir=data_dir)
  except ValueError as e:
    raise FileNotFoundError(f"{description}: no data set {full_name!r} is registered; memjax "
                            "prepares brats2020, brats2021, cxr_pneumonia and mni152") from e
  if not builder.is_prepared():
    if getattr(builder, "MANUAL_DIR_ERROR", "x"):
      raise FileNotFoundError(
          f"{description} is not prepared in {builder.data_dir}; prepare it with python "
          f"tools/prepare_data.py --dataset={full_name} --manual_dir=DIR --data_dir=DIR (and set "
          f"${tfds_builder.DATA_DIR_ENV}=DIR)")
    logging.info("preparing %s in %s (it ships with the install)", full_name, builder.data_dir)
    builder.download_and_prepare()
  feature = builder.info.features["image"]
  try:
    source = builder.as_data_source(split=split)
  except (ValueError, KeyError, AssertionError) as e:
    raise ValueError(f"{description}: split {split!r} cannot be read ({e}); the splits are "
                     f"{sorted(builder.info.splits.keys())}") from e
  return TrainingData(source, tuple(int(s) for s in feature.shape), np.dtype(feature.np_dtype),
                      description)


def downsample(images: jax.Array, factor: int) -> jax.Array:
  """Means over factor^d blocks of the spatial axes of (N, *spatial, C) images."""
  if factor == 1:
    return images
  n, *spatial, c = images.shape
  split = [n]
  for size in spatial:
    split += [size // factor, factor]
  images = images[:, *(slice(0, size // factor * factor) for size in spatial)]
  axes = tuple(range(2, 2 * len(spatial) + 1, 2))
  return images.reshape(*split, c).mean(axis=axes)


def upsample_to(images: np.ndarray, factor: int, shape: Sequence[int]) -> np.ndarray:
  """(N, *spatial, C) images with each pixel repeated factor^d times, zero-padded to `shape`.

  Undoes `downsample`'s change of the pixel grid (not its blur), so that samples of a model
  trained on downsampled data have the data's shape and the audit can compare them with it.
  """
  if factor == 1:
    return images
  for axis in range(1, images.ndim - 1):
    images = images.repeat(factor, axis=axis)
  pad = [(0, 0)] + [(0, want - have) for want, have in zip(shape[:-1], images.shape[1:-1])]
  return np.pad(images, pad + [(0, 0)])


def _downsampled_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
  *spatial, channels = shape
  if any(size < factor for size in spatial):
    raise ValueError(f"data.downsample={factor} is larger than the images {tuple(shape)}")
  return (*(size // factor for size in spatial), channels)


# ----------------------------------------------------------------------------------------------
# Images out.


def from_unit_range(images: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
  """Images in [-1, 1] back in a data set's range: [0, max] integers, or [0, 1] floats.

  The inverse of `memjax.data.pipeline.to_unit_range`, clipped and rounded.
  """
  images = np.asarray(images, np.float32)
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.integer):
    top = np.iinfo(dtype).max
    return np.clip(np.rint((images + 1.0) * (top / 2)), 0, top).astype(dtype)
  return np.clip((images + 1.0) / 2.0, 0.0, 1.0).astype(dtype)


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
  pixels = from_unit_range(images, np.uint8)
  for i in range(n):
    r, c = divmod(i, cols)
    grid[gap + r * (h + gap):gap + r * (h + gap) + h,
         gap + c * (w + gap):gap + c * (w + gap) + w] = pixels[i]
  return grid


def save_grid(path: pathlib.Path, images: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + ".tmp")
  Image.fromarray(image_grid(images)).save(temporary, format="PNG")
  os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------
# The compiled state and steps.


@dataclasses.dataclass(frozen=True)
class _Keys:
  init: jax.Array
  train: jax.Array
  grid: jax.Array
  sample: jax.Array


def _keys(seed: int) -> _Keys:
  return _Keys(*jax.random.split(jax.random.key(int(seed)), 4))


def auto_axes(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """The same devices and axes, typed Auto: shardings inside jit are the compiler's to propagate.

  `jax.make_mesh` types axes Explicit, where every op's sharding is part of its type; model and
  sampler code written for any mesh (a carry that starts replicated and comes back split, say)
  runs unchanged only under Auto.
  """
  auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
  if tuple(mesh.axis_types) == auto:
    return mesh
  return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


# XLA options for programs that run once, where compiling dominates: LLVM's optimizations off.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def use_compilation_cache(workdir: str | pathlib.Path) -> None:
  """Keeps compiled programs in `workdir/.xla_cache`, so that a re-run or a resume skips compiling.

  JAX's persistent compilation cache, for programs that took over half a second to compile. A
  cache directory set already (JAX_COMPILATION_CACHE_DIR, or jax.config) is left as it is.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(workdir).absolute() /
                                                     COMPILATION_CACHE))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  # JAX decides once per process whether a cache is used; make it look again.
  compilation_cache.reset_cache()


class CompiledTrainer:
  """A trainer's state on a mesh, as the pure arrays that jit takes and checkpoints hold.

  The state module is split into its graph (static), its RNG streams (reseeded by the steps
  that use them, never checkpointed: orbax stores no typed keys), and the rest: weights,
  optimizer state, EMA, step. Everything is replicated; batches are split by rows.
  """

  def __init__(self, trainer: Trainer, mesh: jax.sharding.Mesh, image_shape: Sequence[int],
               seed: int, downsample_factor: int = 1):
    self.trainer = trainer
    self.mesh = mesh = auto_axes(mesh)
    self.keys = _keys(seed)
    self.downsample_factor = int(downsample_factor)
    self.image_shape = tuple(int(s) for s in image_shape)  # What the model sees.
    self.replicated = parallel.replicated(mesh)
    self.rows = parallel.rows_sharding(mesh)
    shape = self.image_shape
    self.learning_rate = (None if trainer.learning_rate is None else
                          jax.jit(trainer.learning_rate))  # One program, not one per log.
    graphs = []

    def init(key):
      graphdef, rngs, state = nnx.split(trainer.init_state(key, shape), nnx.RngState, ...)
      graphs.append(graphdef)
      return rngs, state

    # Building the state is traced once: that trace gives the graph (static), the shapes that a
    # checkpoint restores into and the program `init` compiles on first use.
    self._init = jax.jit(init, out_shardings=self.replicated).trace(self.keys.init)
    self._initialize = None
    self.graphdef = graphs[0]

    def step(state, rngs, batch, train_key, variant):
      module = nnx.merge(self.graphdef, rngs, state)
      key = jax.random.fold_in(train_key, module.step[...])
      batch = dict(batch)
      image_key = trainer.features[0]
      batch[image_key] = downsample(batch[image_key], self.downsample_factor)
      if trainer.variant is None:
        metrics = trainer.train_step(module, batch, key)
      else:
        metrics = trainer.train_step(module, batch, key, variant=variant)
      module.step[...] += 1
      _, rngs, state = nnx.split(module, nnx.RngState, ...)
      return state, rngs, metrics

    self._step_function = step
    self._steps = {}
    self._generate = {}

  def init(self) -> tuple[nnx.State, nnx.State]:
    """(rng streams, state) of a fresh run, from the init key."""
    if self._initialize is None:
      # It runs once per process and draws every weight's random numbers separately: compiled
      # for the compiler's speed (3x faster than at full optimization), not its own.
      self._initialize = self._init.lower().compile(_QUICK_COMPILE)
    return self._initialize(self.keys.init)

  def abstract_state(self) -> nnx.State:
    """The checkpointed state's shapes, dtypes and shardings, to restore into."""
    _, state = self._init.out_info
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), state)

  def step(self, state, rngs, batch, step: int | None = None):
    """One training step of `state` (donated) on a global batch.

    `step` is the state's step number, which families with step variants need; when None it is
    read from the state (a wait for the device).
    """
    variant = None
    if self.trainer.variant is not None:
      if step is None:
        step = int(jax.device_get(state["step"][...]))
      variant = self.trainer.variant(int(step))
    if variant not in self._steps:
      self._steps[variant] = jax.jit(
          functools.partial(self._step_function, variant=variant), donate_argnums=(0, 1),
          in_shardings=(self.replicated, self.replicated, self.rows, self.replicated),
          out_shardings=(self.replicated, self.replicated, self.replicated))
    return self._steps[variant](state, rngs, batch, self.keys.train)

  def module(self, state, rngs) -> nnx.Module:
    return nnx.merge(self.graphdef, rngs, state)

  def generate(self, state, rngs, key: jax.Array, count: int) -> jax.Array:
    """`count` images in [-1, 1] from the trainer's generator, split by rows over the mesh."""
    if self.trainer.generate is None:
      raise ValueError(f"the {self.trainer.name} trainer generates no images")
    if count not in self._generate:
      shape = (count, *self.image_shape)

      def generate(state, rngs, key):
        images = self.trainer.generate(nnx.merge(self.graphdef, rngs, state), key, shape,
                                       self.rows)
        return jax.lax.with_sharding_constraint(images, self.rows)

      self._generate[count] = jax.jit(
          generate, in_shardings=(self.replicated, self.replicated, self.replicated),
          out_shardings=self.rows)
    return self._generate[count](state, rngs, key)


# ----------------------------------------------------------------------------------------------
# Checkpoints.


class _BelowWarningFrom(std_logging.Filter):
  """Drops absl records under WARNING that come from one package's files (orbax's progress)."""

  def __init__(self, package: str):
    super().__init__()
    self._part = f"{os.sep}{package}{os.sep}"

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or self._part not in record.pathname


def _quiet_orbax() -> None:
  """Orbax logs every stage of every save at INFO; keep its warnings and errors only."""
  absl_logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _BelowWarningFrom) for f in absl_logger.filters):
    absl_logger.addFilter(_BelowWarningFrom("orbax"))


def checkpoint_manager(workdir: pathlib.Path, keep: int = 3, asynchronous: bool = True,
                       read_only: bool = False):
  """The orbax manager of `workdir/checkpoints`: the last `keep` steps, saved atomically.

  Orbax writes a step into a temporary folder and renames it when complete, so a run killed
  mid-save leaves a temporary folder that is never read back (and is removed on the next start).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  _quiet_orbax()
  directory = (workdir / CHECKPOINTS).absolute()
  if read_only and not directory.is_dir():
    raise FileNotFoundError(f"{directory} does not exist; train first (the same command with "
                            "--config.workflow=train)")
  # A reader neither creates nor cleans; it only lists complete steps and restores them.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(max(1, int(keep))),
      enable_async_checkpointing=asynchronous, cleanup_tmp_directories=not read_only,
      create=not read_only)
  return ocp.CheckpointManager(directory, options=options)


def _save(manager, step: int, state: nnx.State, data_state: Mapping[str, Any],
          meta: Mapping[str, Any]) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state)),
      meta=ocp.args.JsonSave(dict(meta, step=step))), force=True)


def read_checkpoint_meta(workdir: pathlib.Path, step: int | None = None
                         ) -> tuple[int, dict[str, Any]]:
  """(step, meta) of the latest (or given) complete checkpoint in `workdir`.

  Raises:
    FileNotFoundError: when `workdir` holds no complete checkpoint.
  """
  manager = checkpoint_manager(workdir, read_only=True)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir / CHECKPOINTS} holds no complete checkpoint; train "
                              "first (the same command with --config.workflow=train)")
    return step, _read_meta(manager, step)
  finally:
    manager.close()


def _read_meta(manager, step: int) -> dict[str, Any]:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def _restore(manager, step: int, compiled: CompiledTrainer) -> tuple[nnx.State, dict[str, Any]]:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(compiled.abstract_state()), data=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["data"])


def _for_this_process(data_state: Mapping[str, Any]) -> dict[str, Any]:
  """The input pipeline's saved state (written by process 0) as this process's own.

  Every process has read the same number of batches of the same global order, so process 0's
  position is every process's; only the process index in its spec differs.
  """
  state = dict(data_state)
  state["spec"] = dict(state["spec"], process_index=jax.process_index())
  return state


def _meta(trainer: Trainer, data: TrainingData, image_shape: Sequence[int],
          config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What sampling needs without the training data: the model's input and the data's range."""
  return {"trainer": trainer.name, "image_shape": list(image_shape),
          "data_shape": list(data.image_shape),
          "image_dtype": np.dtype(data.image_dtype).name, "data": data.description,
          "downsample": int(config.data.get("downsample", 1)), "seed": int(config.seed)}


def _check_meta(saved: Mapping[str, Any], current: Mapping[str, Any], workdir: pathlib.Path
                ) -> None:
  for key in ("trainer", "image_shape", "data", "downsample"):
    if saved.get(key) != current.get(key):
      raise ValueError(
          f"{workdir / CHECKPOINTS} holds a run with {key} {saved.get(key)!r}, but the config "
          f"gives {current.get(key)!r}; resume with the config it was trained with, or use a new "
          "--workdir")


# ----------------------------------------------------------------------------------------------
# Metrics.


class _Metrics:
  """Scalars to TensorBoard (process 0 only) and to the log, averaged between logs."""

  def __init__(self, workdir: pathlib.Path, enabled: bool):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(logdir=str(workdir / EVENTS))
    self._pending: list[dict[str, jax.Array]] = []

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._pending.append(metrics)

  def wait(self) -> list[dict[str, np.ndarray]]:
    """The metrics added since the last flush, once the steps that make them have run."""
    values = jax.device_get(self._pending)
    self._pending = []
    return values

  def flush(self, step: int, values: list[dict[str, np.ndarray]], extra: Mapping[str, float]
            ) -> dict[str, float]:
    """Averages `values` (from `wait`), adds `extra`, and writes them for `step`."""
    averaged = {}
    for key in (values[0] if values else {}):
      # NaN marks a step that did not compute the metric (a regularizer of every 16th step).
      series = np.asarray([np.asarray(v[key], np.float32) for v in values])
      if not np.isnan(series).all():
        averaged[key] = float(np.nanmean(series))
    averaged.update(extra)
    if self._writer is not None:
      for key, value in averaged.items():
        self._writer.add_scalar(key, value, step)
      self._writer.flush()
    return averaged

  def image(self, tag: str, grid: np.ndarray, step: int) -> None:
    if self._writer is not None:
      self._writer.add_image(tag, grid[None], step, dataformats="CHW")

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


# ----------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
  """The state module at the end, its step, and the last logged metrics."""
  state: nnx.Module
  step: int
  metrics: dict[str, float]


def save_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
  """Writes `config` as workdir/config.json (indented JSON; values JSON lacks as strings)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(json.loads(config.to_json_best_effort()), indent=2) + "\n")
  return path


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, trainer: Trainer, *,
          data: TrainingData | None = None, mesh: jax.sharding.Mesh | None = None
          ) -> TrainResult:
  """Trains `trainer` on `config.data` until `config.num_train_steps`, resuming if it can.

  Args:
    config: seed, batch_size (global), num_train_steps, log_every_steps, checkpoint_every_steps,
      keep_checkpoints, async_checkpoints, sample_every_steps, grid_size, num_devices, progress,
      data.* (source, downsample, num_threads, prefetch_batches).
    workdir: checkpoints/, events/, grids/ go here.
    trainer: the model family.
    data: the training examples; default `open_training_data(config.data)`.
    mesh: default a data mesh over `config.num_devices` devices (0: all).

  Returns:
    The final state, its step and the last logged metrics.
  """
  from memjax.data import pipeline  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  use_compilation_cache(workdir)
  mesh = auto_axes(mesh or parallel.data_mesh(config.get("num_devices") or None))
  data = data or open_training_data(config.data)
  factor = int(config.data.get("downsample", 1))
  image_shape = _downsampled_shape(data.image_shape, factor)
  num_steps = int(config.num_train_steps)
  batch_size = int(config.batch_size)
  compiled = CompiledTrainer(trainer, mesh, image_shape, config.seed, factor)
  meta = _meta(trainer, data, image_shape, config)
  primary = jax.process_index() == 0

  batches = pipeline.device_batches(
      data.source, mesh, batch_size=batch_size, seed=config.seed, features=trainer.features,
      image_key=trainer.features[0], num_threads=config.data.get("num_threads", 4),
      prefetch_batches=config.data.get("prefetch_batches", 4))
  manager = checkpoint_manager(workdir, config.get("keep_checkpoints", 3),
                               config.get("async_checkpoints", True))
  try:
    rngs, state = compiled.init()
    start = manager.latest_step() or 0
    if start:
      _check_meta(_read_meta(manager, start), meta, workdir)
      state, data_state = _restore(manager, start, compiled)
      batches.set_state(_for_this_process(data_state))
      logging.info("resuming from the checkpoint of step %d in %s", start, workdir / CHECKPOINTS)
  except BaseException:
    manager.close()
    raise

  if primary:  # What load_embedder and a resumed run read; as launch.py writes it.
    save_config(config, workdir)
  metrics = _Metrics(workdir, primary)
  log_every = max(1, int(config.get("log_every_steps", 100)))
  checkpoint_every = max(1, int(config.get("checkpoint_every_steps", 1000)))
  sample_every = int(config.get("sample_every_steps", 0))
  grid_size = int(config.get("grid_size", 16))
  grid_size += -grid_size % parallel.mesh_size(mesh)
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  progress = tqdm(total=num_steps, initial=start, desc=f"train {trainer.name}", unit="step",
                  disable=not (primary and config.get("progress", True)), dynamic_ncols=True)
  last = {}
  step = start
  tick, tick_step = time.perf_counter(), start
  in_flight = None
  try:
    while step < num_steps:
      state, rngs, step_metrics = compiled.step(state, rngs, next(batches), step)
      step += 1
      metrics.add(step_metrics)
      # At most two steps in flight: the next batch is read while this step runs, and the
      # progress bar counts steps done rather than steps dispatched.
      jax.block_until_ready(in_flight)
      in_flight = step_metrics
      progress.update()
      if step % log_every == 0 or step == num_steps:
        values = metrics.wait()  # Steps are dispatched asynchronously: time them once done.
        steps_per_second = (step - tick_step) / (time.perf_counter() - tick)
        extra = {"steps_per_second": steps_per_second,
                 "images_per_second": steps_per_second * batch_size}
        if trainer.learning_rate is not None:
          extra["learning_rate"] = float(compiled.learning_rate(step - 1))
        last = metrics.flush(step, values, extra)
        progress.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss",)},
                             refresh=False)
        logging.info("step %d: %s", step,
                     ", ".join(f"{k} {v:.5g}" for k, v in sorted(last.items())))
        tick, tick_step = time.perf_counter(), step
      if step % checkpoint_every == 0 or step == num_steps:
        _save(manager, step, state, batches.get_state(), meta)
      # A grid every sample_every steps, and at the end of a run that long (a short smoke run
      # compiles no sampler).
      if trainer.generate is not None and sample_every and (
          step % sample_every == 0 or (step == num_steps and step >= sample_every)):
        images = parallel.to_host(compiled.generate(state, rngs, compiled.keys.grid, grid_size))
        if primary:
          save_grid(workdir / GRIDS / f"step_{step:08d}.png", images)
          metrics.image("samples", image_grid(images), step)
        tick = time.perf_counter()  # Sampling is not training time.
  finally:
    progress.close()
    manager.wait_until_finished()
    manager.close()
    metrics.close()
  if start >= num_steps:
    logging.info("%s already holds step %d >= num_train_steps %d: nothing to train", workdir,
                 start, num_steps)
  return TrainResult(compiled.module(state, rngs), step, last)


def restore(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, trainer: Trainer, *,
            mesh: jax.sharding.Mesh | None = None, step: int | None = None
            ) -> tuple[CompiledTrainer, nnx.State, nnx.State, int, dict[str, Any]]:
  """The trained state of `workdir` (latest or `step`) without reading the training data.

  Returns (compiled, state, rngs, step, meta).
  """
  workdir = pathlib.Path(workdir)
  use_compilation_cache(workdir)
  mesh = mesh or parallel.data_mesh(config.get("num_devices") or None)
  step, meta = read_checkpoint_meta(workdir, step)
  if meta.get("trainer") != trainer.name:
    raise ValueError(f"{workdir / CHECKPOINTS} holds a {meta.get('trainer')} run, not "
                     f"{trainer.name}; use its own config")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  compiled = CompiledTrainer(trainer, mesh, meta["image_shape"], config.seed,
                             meta.get("downsample", 1))
  rngs, _ = compiled.init()
  manager = checkpoint_manager(workdir, read_only=True)
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(compiled.abstract_state())))["state"]
  manager.close()
  return compiled, state, rngs, step, meta


def sample(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, trainer: Trainer, *,
           mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
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
  from memjax.data import pipeline  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  compiled, state, rngs, step, meta = restore(config, workdir, trainer, mesh=mesh)
  count = int(config.num_samples)
  if count <= 0:
    raise ValueError(f"--config.num_samples must be positive, not {count}")
  devices = parallel.mesh_size(compiled.mesh)
  chunk = max(1, min(int(config.get("sample_batch_size", 64)), count))
  chunk += -chunk % devices
  num_chunks = -(-count // chunk)
  folder = workdir / SAMPLES
  primary = jax.process_index() == 0
  if primary:
    folder.mkdir(parents=True, exist_ok=True)
  dtype = np.dtype(meta["image_dtype"])
  seed = int(config.seed)
  wanted = {_SAMPLE_FILE.format(i) for i in range(num_chunks)}
  if primary:
    for stale in [*folder.glob("samples_*.npz"), *folder.glob(".samples_*.tmp")]:
      if stale.name not in wanted or not _chunk_matches(stale, step, seed):
        stale.unlink()
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  grid = []
  for i in tqdm(range(num_chunks), desc=f"sample {trainer.name} (step {step})", unit="chunk",
                disable=not (primary and config.get("progress", True)), dynamic_ncols=True):
    path = folder / _SAMPLE_FILE.format(i)
    size = min(chunk, count - i * chunk)
    if path.exists() and _chunk_matches(path, step, seed, size):
      if len(grid) < 64:
        with np.load(path) as stored:
          grid.append(pipeline.to_unit_range(stored["images"][:64]))
      continue
    images = compiled.generate(state, rngs, jax.random.fold_in(compiled.keys.sample, i), chunk)
    images = upsample_to(parallel.to_host(images)[:size], compiled.downsample_factor,
                         meta["data_shape"])
    if len(grid) < 64:
      grid.append(images[:64])
    if primary:
      # Written under a hidden name (which the audit skips) and renamed when complete.
      temporary = folder / f".{path.name}.tmp"
      with open(temporary, "wb") as f:
        np.savez(f, images=from_unit_range(images, dtype), seed=np.int64(seed),
                 step=np.int64(step))
      os.replace(temporary, path)
  if primary:
    save_grid(workdir / GRIDS / f"samples_step_{step:08d}.png", np.concatenate(grid)[:64])
    logging.info("%d samples of step %d written to %s", count, step, folder)
  return folder


def _chunk_matches(path: pathlib.Path, step: int, seed: int, size: int | None = None) -> bool:
  try:
    with np.load(path) as stored:
      return (int(stored["step"]) == step and int(stored["seed"]) == seed and
              (size is None or len(stored["images"]) == size))
  except (OSError, ValueError, KeyError):
    return False

