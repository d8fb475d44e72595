"""What a model family trains and how it is compiled: `Trainer`, `TrainState`, the optimizer, and
`CompiledTrainer`, the state on a mesh with its jitted init, steps and sampler.

A model family (DDPM in `ddpm.py`, StyleGAN2, the contrastive encoder) describes itself with a
`Trainer`: how to build its state (an NNX module holding its models, optimizers, EMA weights and
a `step` counter, e.g. `TrainState`), one training step on a batch, and optionally how to
generate images. `CompiledTrainer` turns it into pure arrays and jitted programs on a one-axis
`data` mesh: every global batch is split over the mesh by rows, the state is replicated, and
randomness comes from `jax.random.key(seed)` alone, split into an init, a training and two
sampling keys (step s uses `fold_in(training key, s)`, so a resumed run draws the same noise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import os
import pathlib
from typing import TYPE_CHECKING, Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from memjax import parallel
from memjax.train import inputs

if TYPE_CHECKING:  # Configs are only read here; a bare machine may lack ml_collections.
  import ml_collections

COMPILATION_CACHE = ".xla_cache"  # JAX's persistent compilation cache, inside the work dir

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
      batch[image_key] = inputs.downsample(batch[image_key], self.downsample_factor)
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
