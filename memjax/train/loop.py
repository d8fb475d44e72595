"""The training loop that every model family shares: steps, metrics, grids, checkpoints, resume.

A model family describes itself with a `Trainer` (state.py); `train` does the rest, the same way
for every family:

* a one-axis `data` mesh (`memjax.parallel.data_mesh`): every global batch is split over it by
  rows, the state is replicated, and one jit-compiled step (state donated) runs per batch
  (`state.CompiledTrainer`);
* randomness from `jax.random.key(config.seed)` alone; step s uses `fold_in(training key, s)`,
  so a resumed run draws the same noise;
* an orbax `CheckpointManager` in `workdir/checkpoints` (checkpoints.py: async, atomic, the
  last `keep_checkpoints` kept) that saves the state, the input pipeline's position and what
  sampling needs to know about the data. Re-running the same command resumes from the newest
  intact checkpoint and sees the batches an uninterrupted run would have seen; a config that
  cannot resume it is refused before anything is written;
* TensorBoard scalars in `workdir/events` (each metric, learning rate, steps/s, images/s), a
  progress bar, and image grids in `workdir/grids` every `sample_every_steps` (sampling.py).

The rooms: state.py (Trainer, TrainState, optimizer, CompiledTrainer), inputs.py (the training
images, through `memjax.data.sources.open`), checkpoints.py (orbax, restore, the checks),
run_config.py (config.json), sampling.py (`sample`, grids) and this loop.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import pathlib
import time
from typing import TYPE_CHECKING, Any

from absl import logging
from flax import nnx
import jax
import numpy as np

from memjax import parallel
from memjax.train import checkpoints
from memjax.train import inputs
from memjax.train import run_config

# pylint: disable=g-multiple-import,g-importing-member
from memjax.train.checkpoints import CHECKPOINTS, checkpoint_manager
from memjax.train.inputs import TrainingData, downsample, open_training_data
from memjax.train.sampling import GRIDS, image_grid, save_grid
from memjax.train.state import CompiledTrainer, Trainer, auto_axes, use_compilation_cache
# pylint: enable=g-multiple-import,g-importing-member

if TYPE_CHECKING:  # Configs are only read here; a bare machine may lack ml_collections.
  import ml_collections

# The input pipeline (grain, array_record), TensorBoard, tqdm and orbax are imported where they
# are used, so that building and stepping a `CompiledTrainer` on synthetic batches needs none.

EVENTS = "events"


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


@dataclasses.dataclass
class _Start:
  """A run ready for its first step: compiled, fed, and resumed where a checkpoint was."""
  compiled: CompiledTrainer
  batches: Any  # pipeline.DeviceBatches
  meta: dict[str, Any]
  state: nnx.State
  rngs: nnx.State
  step: int


def _for_this_process(data_state: Mapping[str, Any]) -> dict[str, Any]:
  """The input pipeline's saved state (written by process 0) as this process's own.

  Every process has read the same number of batches of the same global order, so process 0's
  position is every process's; only the process index in its spec differs.
  """
  state = dict(data_state)
  state["spec"] = dict(state["spec"], process_index=jax.process_index())
  return state


def _start(config: ml_collections.ConfigDict, workdir: pathlib.Path, trainer: Trainer,
           data: TrainingData | None, mesh: jax.sharding.Mesh | None) -> _Start:
  """Compiles the trainer, opens the data and restores the newest intact checkpoint that fits.

  It writes nothing, so that a run whose resume fails leaves the work dir as it was; damaged
  newer steps are set aside only once everything else has passed.
  """
  from memjax.data import pipeline  # pylint: disable=g-import-not-at-top
  mesh = auto_axes(mesh or parallel.data_mesh(config.get("num_devices") or None))
  data = data or inputs.open_training_data(config.data, trainer.features)
  factor = int(config.data.get("downsample", 1))
  image_shape = inputs.downsampled_shape(data.image_shape, factor)
  compiled = CompiledTrainer(trainer, mesh, image_shape, config.seed, factor)
  meta = checkpoints.make_meta(trainer, data, image_shape, config)
  batches = pipeline.device_batches(
      data.source, mesh, batch_size=int(config.batch_size), seed=config.seed,
      features=trainer.features, image_key=trainer.features[0],
      num_threads=config.data.get("num_threads", 4),
      prefetch_batches=config.data.get("prefetch_batches", 4))
  resumed = checkpoints.resume(workdir, config, compiled, meta,
                               dataclasses.asdict(batches.spec))
  rngs, state = compiled.init()
  if resumed is None:
    return _Start(compiled, batches, meta, state, rngs, 0)
  batches.set_state(_for_this_process(resumed.data_state))
  checkpoints.set_aside(workdir, resumed.damaged)
  logging.info("resuming from the checkpoint of step %d in %s", resumed.step,
               workdir / CHECKPOINTS)
  return _Start(compiled, batches, meta, resumed.state, rngs, resumed.step)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, trainer: Trainer, *,
          data: TrainingData | None = None, mesh: jax.sharding.Mesh | None = None
          ) -> TrainResult:
  """Trains `trainer` on `config.data` until `config.num_train_steps`, resuming if it can.

  Args:
    config: seed, batch_size (global), num_train_steps, log_every_steps, checkpoint_every_steps,
      keep_checkpoints, async_checkpoints, sample_every_steps, grid_size, num_devices, progress,
      data.* (source, downsample, num_threads, prefetch_batches).
    workdir: checkpoints/, events/, grids/ and config.json go here.
    trainer: the model family.
    data: the training examples; default `inputs.open_training_data(config.data)`.
    mesh: default a data mesh over `config.num_devices` devices (0: all).

  Returns:
    The final state, its step and the last logged metrics.

  Raises:
    checkpoints.CheckpointError: when workdir holds a run this config cannot resume, or no
      intact checkpoint; nothing is written then.
  """
  workdir = pathlib.Path(workdir)
  use_compilation_cache(workdir)
  start = _start(config, workdir, trainer, data, mesh)
  primary = jax.process_index() == 0
  if primary:  # What load_embedder and a resumed run read; as launch.py writes it.
    run_config.write_config(config, workdir)
  manager = checkpoint_manager(workdir, config.get("keep_checkpoints", 3),
                               config.get("async_checkpoints", True))
  metrics = _Metrics(workdir, primary)
  num_steps = int(config.num_train_steps)
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  progress = tqdm(total=num_steps, initial=start.step, desc=f"train {trainer.name}", unit="step",
                  disable=not (primary and config.get("progress", True)), dynamic_ncols=True)
  try:
    try:
      state, rngs, step, last = _run(config, workdir, start, manager, metrics, progress)
    finally:
      progress.close()
      try:
        manager.wait_until_finished()
      finally:
        manager.close()
        metrics.close()
  except Exception as error:  # pylint: disable=broad-except
    # A checkpoint that found the disk full (raised by the save after it, or by the wait):
    # one line, and orbax's temporary folder of that step removed.
    if checkpoints.is_disk_full(error):
      raise checkpoints.disk_full_error(workdir, start.state, error) from None
    raise
  if start.step >= num_steps:
    logging.info("%s already holds step %d >= num_train_steps %d: nothing to train", workdir,
                 start.step, num_steps)
  return TrainResult(start.compiled.module(state, rngs), step, last)


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path, start: _Start, manager,
         metrics: _Metrics, progress: Any) -> tuple[nnx.State, nnx.State, int, dict[str, float]]:
  """The steps from `start` to num_train_steps, with logs, checkpoints and grids between."""
  compiled, trainer = start.compiled, start.compiled.trainer
  num_steps = int(config.num_train_steps)
  log_every = max(1, int(config.get("log_every_steps", 100)))
  checkpoint_every = max(1, int(config.get("checkpoint_every_steps", 1000)))
  sample_every = int(config.get("sample_every_steps", 0))
  grid_size = int(config.get("grid_size", 16))
  grid_size += -grid_size % parallel.mesh_size(compiled.mesh)
  state, rngs, step = start.state, start.rngs, start.step
  last = {}
  tick, tick_step = time.perf_counter(), step
  in_flight = None
  while step < num_steps:
    state, rngs, step_metrics = compiled.step(state, rngs, next(start.batches), step)
    step += 1
    metrics.add(step_metrics)
    # At most two steps in flight: the next batch is read while this step runs, and the
    # progress bar counts steps done rather than steps dispatched.
    jax.block_until_ready(in_flight)
    in_flight = step_metrics
    progress.update()
    if step % log_every == 0 or step == num_steps:
      last = _log(config, compiled, metrics, progress, step, step - tick_step, tick)
      tick, tick_step = time.perf_counter(), step
    if step % checkpoint_every == 0 or step == num_steps:
      checkpoints.save(manager, step, state, start.batches.get_state(), start.meta)
    # A grid every sample_every steps, and at the end of a run that long (a short smoke run
    # compiles no sampler).
    if trainer.generate is not None and sample_every and (
        step % sample_every == 0 or (step == num_steps and step >= sample_every)):
      _grid(compiled, state, rngs, grid_size, workdir, metrics, step)
      tick = time.perf_counter()  # Sampling is not training time.
  return state, rngs, step, last


def _log(config: ml_collections.ConfigDict, compiled: CompiledTrainer, metrics: _Metrics,
         progress: Any, step: int, steps: int, tick: float) -> dict[str, float]:
  """Averages and writes the metrics of the last `steps` steps, begun at `tick`, with speeds."""
  values = metrics.wait()  # Steps are dispatched asynchronously: time them once done.
  steps_per_second = steps / (time.perf_counter() - tick)
  extra = {"steps_per_second": steps_per_second,
           "images_per_second": steps_per_second * int(config.batch_size)}
  if compiled.trainer.learning_rate is not None:
    extra["learning_rate"] = float(compiled.learning_rate(step - 1))
  last = metrics.flush(step, values, extra)
  progress.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss",)},
                       refresh=False)
  logging.info("step %d: %s", step, ", ".join(f"{k} {v:.5g}" for k, v in sorted(last.items())))
  return last


def _grid(compiled: CompiledTrainer, state: nnx.State, rngs: nnx.State, grid_size: int,
          workdir: pathlib.Path, metrics: _Metrics, step: int) -> None:
  """A grid of generated images, to workdir/grids and TensorBoard."""
  images = parallel.to_host(compiled.generate(state, rngs, compiled.keys.grid, grid_size))
  if jax.process_index() == 0:
    save_grid(workdir / GRIDS / f"step_{step:08d}.png", images)
    metrics.image("samples", image_grid(images), step)
