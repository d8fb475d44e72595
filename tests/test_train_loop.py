"""The shared training loop: resume after SIGKILL, half-written checkpoints, metrics, helpers.

A tiny denoiser stands in for a model family here (tests/test_ddpm.py trains the real U-Net), so
that the loop's own behaviour is tested fast: the same batches and weights after a kill and a
resume as without, orbax's temporary folders never read, the loss falling, the scalars written.
"""

import collections
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from memjax.train import checkpoints
from memjax.train import inputs
from memjax.train import loop
from memjax.train import sampling
from memjax.train import state as state_lib

TESTS = pathlib.Path(__file__).resolve().parent
NUM_IMAGES = 24
SHAPE = (8, 8, 2)


class Denoiser(nnx.Module):
  """conv -> GroupNorm -> SiLU -> dropout -> conv: small, but with every kind of state."""

  def __init__(self, channels: int, rngs: nnx.Rngs):
    self.conv_in = nnx.Conv(channels, 16, (3, 3), rngs=rngs)
    self.norm = nnx.GroupNorm(16, num_groups=4, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.conv_out = nnx.Conv(16, channels, (3, 3), rngs=rngs)

  def __call__(self, x, *, deterministic=True):
    h = nnx.silu(self.norm(self.conv_in(x)))
    return self.conv_out(self.dropout(h, deterministic=deterministic))


def make_trainer(config):
  """Denoising with the step's key for noise and dropout; reports a fingerprint of each batch."""
  tx, schedule = state_lib.make_optimizer(config.optimizer, config.num_train_steps)

  def init_state(key, image_shape):
    params, dropout = jax.random.split(key)
    return state_lib.TrainState(
        Denoiser(image_shape[-1], nnx.Rngs(params=params, dropout=dropout)), tx, config.ema_decay)

  def train_step(state, batch, key):
    images = batch["image"]
    noise_key, dropout_key = jax.random.split(key)
    nnx.reseed(state.model, dropout=dropout_key)
    noisy = images + 0.5 * jax.random.normal(noise_key, images.shape)

    def loss_fn(model):
      return jnp.mean(jnp.square(model(noisy, deterministic=False) - images))

    loss, grads = nnx.value_and_grad(loss_fn)(state.model)
    state.apply_gradients(grads)
    weights = jnp.arange(images.size, dtype=jnp.float32).reshape(images.shape) % 13
    return {"loss": loss, "batch_fingerprint": jnp.sum(images * weights)}

  def generate(state, key, shape, sharding):
    del sharding
    return jnp.tanh(state.sampling_model(jax.random.normal(key, shape)))

  return state_lib.Trainer("denoiser", init_state, train_step, generate, schedule)


def make_config(**overrides):
  config = default.get_config()
  config.workflow = "train"
  config.model.name = "denoiser"
  config.batch_size = 8
  config.num_train_steps = 12
  config.log_every_steps = 1
  config.checkpoint_every_steps = 4
  config.keep_checkpoints = 10
  config.ema_decay = 0.9
  config.progress = False
  config.data.num_threads = 2
  config.data.prefetch_batches = 2
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 3
  return default.override(config, overrides)


class SlowExamples:
  """Examples that take `delay` seconds each to read: a run slow enough to be killed midway."""

  def __init__(self, delay: float = 0.0):
    images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, *SHAPE), dtype=np.uint8)
    self._examples = [{"image": image} for image in images]
    self._delay = delay

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    if self._delay:
      time.sleep(self._delay)
    return self._examples[index]


def training_data(delay: float = 0.0) -> inputs.TrainingData:
  return inputs.TrainingData(SlowExamples(delay), SHAPE, np.dtype(np.uint8), "test images")


def run_training(workdir: str, num_train_steps: int, delay: float = 0.0) -> None:
  """What the subprocesses run (imported from this file)."""
  config = make_config(num_train_steps=num_train_steps)
  loop.train(config, workdir, make_trainer(config), data=training_data(delay))


def read_scalars(events: pathlib.Path) -> list[dict[str, dict[int, float]]]:
  """Every TensorBoard event file's scalars, {tag: {step: value}}, oldest file first."""
  from tensorboardX.proto import event_pb2
  files = []
  for path in sorted(events.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
    scalars = collections.defaultdict(dict)
    data = path.read_bytes()
    position = 0
    while position + 12 <= len(data):  # TFRecord: length, its CRC, the record, its CRC.
      (length,) = struct.unpack("<Q", data[position:position + 8])
      event = event_pb2.Event.FromString(data[position + 12:position + 12 + length])
      position += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars[value.tag][event.step] = value.simple_value
    files.append(dict(scalars))
  return files


def params(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(state, nnx.Param))]


def test_loss_falls_and_scalars_are_written(tmp_path):
  config = make_config(num_train_steps=60, log_every_steps=10, checkpoint_every_steps=60)
  result = loop.train(config, tmp_path, make_trainer(config), data=training_data())
  assert result.step == 60
  (scalars,) = read_scalars(tmp_path / loop.EVENTS)
  assert {"loss", "learning_rate", "steps_per_second", "images_per_second",
          "batch_fingerprint"} <= set(scalars)
  assert sorted(scalars["loss"]) == list(range(10, 61, 10))
  losses = [scalars["loss"][step] for step in range(10, 61, 10)]
  assert losses[-1] < 0.5 * losses[0], losses
  assert scalars["learning_rate"][60] == pytest.approx(3e-3)
  assert scalars["images_per_second"][60] == pytest.approx(8 * scalars["steps_per_second"][60],
                                                           rel=1e-5)
  assert (tmp_path / sampling.GRIDS).exists() is False  # sample_every_steps = 0
  assert sorted(p.name for p in (tmp_path / checkpoints.CHECKPOINTS).iterdir()) == ["60"]


def test_killed_run_resumes_with_the_same_batches_and_weights(tmp_path):
  reference = make_config(num_train_steps=24)
  uninterrupted = loop.train(reference, tmp_path / "uninterrupted", make_trainer(reference),
                             data=training_data())
  expected = read_scalars(tmp_path / "uninterrupted" / loop.EVENTS)[0]

  workdir = tmp_path / "killed"
  command = [sys.executable, "-c",
             f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]; "
             "import test_train_loop as t; t.run_training(sys.argv[1], 24, float(sys.argv[2]))",
             str(workdir)]
  log = tmp_path / "killed.log"
  with open(log, "wb") as output:
    process = subprocess.Popen(command + ["0.03"], stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    folder = workdir / checkpoints.CHECKPOINTS
    # Kill as soon as a complete checkpoint exists (orbax renames it from a temporary folder).
    while not (folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())):
      assert process.poll() is None, log.read_text()[-3000:]
      assert time.monotonic() < deadline, "no checkpoint within 120 s"
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
  saved = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  assert saved and max(saved) < 24, f"the run was not killed before its end: {saved}"

  resumed = subprocess.run(command + ["0"], capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  killed_scalars, resumed_scalars = read_scalars(workdir / loop.EVENTS)
  first_resumed = min(resumed_scalars["loss"])
  assert first_resumed - 1 in saved  # Resumed from a checkpoint it wrote.
  assert sorted(resumed_scalars["loss"]) == list(range(first_resumed, 25))
  for scalars in (killed_scalars, resumed_scalars):
    for tag in ("loss", "batch_fingerprint"):
      for step, value in scalars[tag].items():  # Steps redone after the kill agree too.
        assert value == expected[tag][step], (tag, step)

  config = make_config(num_train_steps=24)
  compiled, state, rngs, step, _ = checkpoints.restore(config, workdir, make_trainer(config))
  assert step == 24
  for got, want in zip(params(compiled.module(state, rngs)), params(uninterrupted.state)):
    np.testing.assert_array_equal(got, want)


def test_half_written_checkpoint_is_never_read(tmp_path):
  config = make_config(num_train_steps=8)
  loop.train(config, tmp_path, make_trainer(config), data=training_data())
  # What a run killed while saving step 12 leaves: orbax's temporary folder, half filled.
  partial = tmp_path / checkpoints.CHECKPOINTS / "12.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{truncated")
  config = make_config(num_train_steps=12)
  result = loop.train(config, tmp_path, make_trainer(config), data=training_data())
  assert result.step == 12
  assert not partial.exists()  # Removed, not restored.
  assert sorted(read_scalars(tmp_path / loop.EVENTS)[-1]["loss"]) == [9, 10, 11, 12]

  other = make_config(num_train_steps=16, batch_size=4)
  with pytest.raises(ValueError, match="batch_size"):
    loop.train(other, tmp_path, make_trainer(other), data=training_data())
  again = loop.train(config, tmp_path, make_trainer(config), data=training_data())
  assert again.step == 12 and not again.metrics  # Already trained: nothing to do.


def test_grids_and_samples(tmp_path):
  config = make_config(num_train_steps=4, sample_every_steps=2, grid_size=6, num_samples=10,
                       sample_batch_size=4)
  trainer = make_trainer(config)
  loop.train(config, tmp_path, trainer, data=training_data())
  assert sorted(p.name for p in (tmp_path / sampling.GRIDS).iterdir()) == [
      "step_00000002.png", "step_00000004.png"]
  folder = sampling.sample(config, tmp_path, trainer)
  files = sorted(folder.iterdir())
  assert [p.name for p in files] == ["samples_00000.npz", "samples_00001.npz",
                                     "samples_00002.npz"]
  first = dict(np.load(files[0]))
  assert first["images"].dtype == np.uint8 and first["images"].shape == (4, *SHAPE)
  assert int(first["step"]) == 4 and int(first["seed"]) == 0
  assert len(np.load(files[2])["images"]) == 2  # 10 = 4 + 4 + 2
  assert (tmp_path / sampling.GRIDS / "samples_step_00000004.png").exists()
  # Again: chunks of the same step and seed are kept, not generated anew.
  mtimes = [p.stat().st_mtime_ns for p in files]
  sampling.sample(config, tmp_path, trainer)
  assert [p.stat().st_mtime_ns for p in sorted(folder.iterdir())] == mtimes


def test_sample_without_checkpoint_says_train_first(tmp_path):
  config = make_config()
  with pytest.raises(FileNotFoundError, match="train first"):
    sampling.sample(config, tmp_path, make_trainer(config))


def test_downsample_and_upsample():
  images = np.arange(2 * 4 * 6 * 1, dtype=np.float32).reshape(2, 4, 6, 1)
  small = np.asarray(inputs.downsample(jnp.asarray(images), 2))
  assert small.shape == (2, 2, 3, 1)
  assert small[0, 0, 0, 0] == np.mean(images[0, :2, :2, 0])
  volumes = np.ones((1, 5, 4, 4, 2), np.float32)
  assert inputs.downsample(jnp.asarray(volumes), 2).shape == (1, 2, 2, 2, 2)
  back = inputs.upsample_to(small, 2, (4, 6, 1))
  assert back.shape == images.shape and back[0, 1, 1, 0] == small[0, 0, 0, 0]
  assert inputs.upsample_to(np.ones((1, 2, 2, 2, 1)), 2, (5, 4, 4, 1)).shape == (1, 5, 4, 4, 1)


def test_from_unit_range_inverts_the_pipeline():
  from memjax.data import pipeline
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  np.testing.assert_array_equal(
      pipeline.from_unit_range(pipeline.to_unit_range(pixels), np.uint8), pixels)
  assert pipeline.from_unit_range(np.array([-2.0, 2.0]), np.uint16).tolist() == [0, 65535]
  assert pipeline.from_unit_range(np.array([0.0]), np.float32).tolist() == [0.5]


def test_image_grid_shows_channel_zero_enlarged():
  images = -np.ones((5, 4, 4, 3), np.float32)
  images[1, ..., 0] = 1.0
  grid = sampling.image_grid(images, min_cell=8)
  assert grid.dtype == np.uint8 and grid.shape == (2 * 10 + 2, 3 * 10 + 2)
  assert grid[2:10, 12:20].min() == 255 and grid[2:10, 2:10].max() == 0


def test_learning_rate_schedules():
  options = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10,
                                           schedule="constant"))
  schedule = state_lib.learning_rate_schedule(options, 100)
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == 0.5 and float(schedule(50)) == 1.0
  options.schedule = "cosine"
  options.final_learning_rate_fraction = 0.5
  schedule = state_lib.learning_rate_schedule(options, 100)
  assert float(schedule(10)) == pytest.approx(1.0) and float(schedule(100)) == pytest.approx(0.5)
  options.schedule = "linear"
  with pytest.raises(ValueError, match="schedule"):
    state_lib.learning_rate_schedule(options, 100)



def test_compilation_cache_lives_in_the_work_dir_unless_one_is_set(tmp_path):
  # This session's cache (tests/conftest.py sets JAX_COMPILATION_CACHE_DIR) is left alone.
  state_lib.use_compilation_cache(tmp_path / "run")
  assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]
  assert not (tmp_path / "run" / state_lib.COMPILATION_CACHE).exists()
  # Without one, a run's compiled programs go to workdir/.xla_cache, even after an earlier
  # compilation decided that no cache was in use.
  script = (
      "import sys, jax, jax.numpy as jnp\n"
      "from memjax.train import state\n"
      "jax.jit(jnp.sin)(1.0)\n"
      "state.use_compilation_cache(sys.argv[1])\n"
      "jax.jit(lambda x: jnp.cos(x) * 3)(jnp.ones(7)).block_until_ready()\n"
      "print(jax.config.jax_compilation_cache_dir, "
      "jax.config.jax_persistent_cache_min_compile_time_secs)\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
  del env["JAX_COMPILATION_CACHE_DIR"]
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # explicit: kept as it is
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], env=env,
                          cwd=TESTS.parent, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  cache = tmp_path / "run" / state_lib.COMPILATION_CACHE
  assert result.stdout.split() == [str(cache), "0.0"]
  assert any(cache.iterdir())


def test_learning_rate_is_logged_without_compiling_per_log():
  trainer = make_trainer(make_config())
  mesh = state_lib.auto_axes(jax.make_mesh((1,), ("data",)))
  compiled = state_lib.CompiledTrainer(trainer, mesh, SHAPE, seed=0)
  for step in (0, 5, 11):
    assert float(compiled.learning_rate(step)) == pytest.approx(float(trainer.learning_rate(step)))
  assert compiled.learning_rate._cache_size() == 1
