"""The DDPM on the shared loop, end to end: sharding, memorization, volumes, samples to audit.

The proof that the whole loop works is the memorization test: a small U-Net trained on 8 tiny
images until its DDIM samples reproduce them, as the paper finds that diffusion models do with
little data, measured with the audit's own correlation search.
"""

import json
import pathlib
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from memjax import parallel
from memjax import workflows
from memjax.data import pipeline
from memjax.memorization import top_k_correlation
from memjax.models import unet
from memjax.train import ddpm
from memjax.train import inputs as inputs_lib
from memjax.train import loop
from memjax.train import sampling
from memjax.train import state as state_lib
from memjax.train import timing

NUM_IMAGES = 8
SIZE = 8


def one_device():
  return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])


def make_config(**overrides):
  """A U-Net DDPM small enough to train in seconds on a CPU (one level of 32 channels)."""
  config = default.ddpm(default.get_config())
  config.workflow = "train"
  config.model.model_channels = 32
  config.model.channel_mult = (1,)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = ()
  config.model.num_head_channels = -1
  config.diffusion.schedule = "cosine"
  config.diffusion.num_steps = 100
  config.sample.method = "ddim"
  config.sample.num_steps = 20
  config.sample.eta = 1.0
  config.batch_size = 16
  config.num_train_steps = 4
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.ema_decay = 0.0
  config.progress = False
  config.data.num_threads = 2
  config.optimizer.learning_rate = 1e-2
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 20
  config.num_samples = 32
  config.sample_batch_size = 32
  return default.override(config, overrides)


def eight_images() -> np.ndarray:
  """8 uint8 8x8 images of random 2x2 blocks: unrelated to each other (|r| < 0.7)."""
  blocks = np.random.default_rng(1).integers(0, 256, (NUM_IMAGES, 4, 4, 1))
  return blocks.repeat(2, axis=1).repeat(2, axis=2).astype(np.uint8)


def as_data(images: np.ndarray) -> inputs_lib.TrainingData:
  return inputs_lib.TrainingData([{"image": image} for image in images], images.shape[1:],
                                 images.dtype, "eight images")


def test_one_step_is_the_same_on_4_and_1_devices():
  config = make_config(ema_decay=0.9, **{"model.dropout": 0.1})
  images = pipeline.to_unit_range(eight_images().repeat(2, axis=0))
  results = []
  for devices in (4, 1):
    compiled = state_lib.CompiledTrainer(ddpm.make_trainer(config), parallel.data_mesh(devices),
                                         images.shape[1:], seed=0)
    rngs, state = compiled.init()
    state, rngs, metrics = compiled.step(state, rngs,
                                         {"image": jax.device_put(images, compiled.rows)})
    results.append((float(metrics["loss"]), compiled.module(state, rngs)))
  (loss_4, four), (loss_1, one) = results
  assert loss_4 == pytest.approx(loss_1, abs=1e-5)
  for model in ("model", "ema"):
    got = jax.tree.leaves(nnx.state(getattr(four, model), nnx.Param))
    want = jax.tree.leaves(nnx.state(getattr(one, model), nnx.Param))
    assert len(got) == len(want) > 10
    for a, b in zip(got, want):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_bfloat16_step_on_4_devices_keeps_float32_state_near_float32():
  images = pipeline.to_unit_range(eight_images().repeat(2, axis=0))
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = make_config(**{"model.dtype": dtype, "optimizer.schedule": "constant",
                            "optimizer.warmup_steps": 0})
    compiled = state_lib.CompiledTrainer(ddpm.make_trainer(config), parallel.data_mesh(4),
                                         images.shape[1:], seed=0)
    rngs, state = compiled.init()
    batch = {"image": jax.device_put(images, compiled.rows)}
    metrics = []
    for step in range(2):  # The first step's loss is the noise's: the U-Net starts at zero.
      state, rngs, step_metrics = compiled.step(state, rngs, batch, step)
      metrics.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
    # Weights, Adam's moments: float32 whatever the compute dtype.
    module = compiled.module(state, rngs)
    for part in (module.model, module.optimizer):
      floats = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(part))
                if jnp.issubdtype(leaf.dtype, jnp.floating)}
      assert floats == {np.dtype(np.float32)}
    results[dtype] = metrics
  for want, got in zip(results["float32"], results["bfloat16"]):
    for key in ("loss", "grad_norm"):
      assert np.isfinite(got[key])
      assert got[key] == pytest.approx(want[key], rel=2e-2), key
  assert results["bfloat16"][0]["grad_norm"] != results["float32"][0]["grad_norm"]


# The paper's DDPM cut to one level (the next test's subprocess times the same programs, which
# this session's compilation cache then holds).
TINY_PAPER = ("config.model.channel_mult = (1,); config.model.attention_resolutions = (); "
              "config.model.num_res_blocks = 1")


def test_time_to_first_step_reports_every_phase():
  config = timing.paper_ddpm_config(batch_size=2)
  exec(TINY_PAPER)  # pylint: disable=exec-used
  figures = timing.time_to_first_step(config, (SIZE, SIZE, 1), num_devices=1, timed_steps=2)
  for key in ("trainer_s", "init_s", "first_step_s", "time_to_first_step_s", "steps_per_s",
              "compile_s"):
    assert figures[key] > 0, key
  assert figures["time_to_first_step_s"] == pytest.approx(
      figures["trainer_s"] + figures["init_s"] + figures["first_step_s"])
  assert np.isfinite(figures["loss"]) and figures["devices"] == 1
  assert figures["num_params"] == unet.count_parameters(
      ddpm.make_model(config.model, (SIZE, SIZE, 1), nnx.Rngs(0)))


def test_timing_needs_no_data_pipeline_config_library_or_tensorboard():
  # What a bare GPU machine lacks: tools/gpu_check.py times the paper's DDPM without them.
  lacking = ("ml_collections", "grain", "array_record", "tensorboardX", "nibabel", "diffusers",
             "tensorflow_datasets", "tqdm")
  script = (
      "import importlib.abc, sys\n"
      "class Lacking(importlib.abc.MetaPathFinder):\n"
      "  def find_spec(self, name, path, target=None):\n"
      f"    if name.split('.')[0] in {lacking!r}: raise ImportError(name)\n"
      "sys.meta_path.insert(0, Lacking())\n"
      "from memjax.train import timing\n"
      "config = timing.paper_ddpm_config(batch_size=2)\n"
      f"{TINY_PAPER}\n"
      f"figures = timing.time_to_first_step(config, ({SIZE}, {SIZE}, 1), num_devices=1, "
      "timed_steps=1)\n"
      "print(type(config).__name__, figures['dtype'], figures['loss'] > 0)\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parent.parent, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["Options", "float32", "True"]


def test_paper_ddpm_config_is_configs_cxr_ddpm():
  from configs import cxr_ddpm  # pylint: disable=g-import-not-at-top
  want, got = cxr_ddpm.get_config(), timing.paper_ddpm_config()
  for section in ("model", "diffusion", "sample", "optimizer"):
    assert set(got[section]) == set(want[section]), section
    for key, value in got[section].items():
      assert want[section][key] == value, f"{section}.{key}"
  for key in ("batch_size", "ema_decay", "num_train_steps", "seed"):
    assert want[key] == got[key], key


def test_sample_variance_reaches_the_ancestral_sampler(monkeypatch):
  seen = []

  def recording_sample(*args, variance, **kwargs):
    del args, kwargs
    seen.append(variance)

  monkeypatch.setattr(ddpm.diffusion_lib, "ddpm_sample", recording_sample)
  state = type("State", (), {"sampling_model": None})()
  for variance in ("small", "large"):
    trainer = ddpm.make_trainer(make_config(**{"sample.method": "ddpm",
                                               "sample.variance": variance}))
    trainer.generate(state, jax.random.key(0), (1, SIZE, SIZE, 1), None)
  assert seen == ["small", "large"]
  config = make_config(**{"sample.method": "ddpm"})
  del config.sample["variance"]  # a config without the key: guided-diffusion's default
  ddpm.make_trainer(config).generate(state, jax.random.key(0), (1, SIZE, SIZE, 1), None)
  assert seen[-1] == "large"
  with pytest.raises(ValueError, match="sample.variance must be one of"):
    ddpm.make_trainer(make_config(**{"sample.variance": "learned"}))


def test_empty_channel_mult_is_guided_diffusions_choice_for_the_image_size():
  options = make_config(**{"model.channel_mult": ()}).model
  model = nnx.eval_shape(lambda: ddpm.make_model(options, (64, 64, 1), nnx.Rngs(0)))
  assert model.middle_in.in_conv.in_features == 4 * 32  # (1, 2, 3, 4) at 64x64
  assert sum(isinstance(block, unet.Downsample) for block in model.down_blocks) == 3
  with pytest.raises(ValueError, match=r"channel_mult=\(\).*48"):
    ddpm.make_model(options, (48, 48, 1), nnx.Rngs(0))


def test_compute_dtype_is_checked():
  with pytest.raises(ValueError, match="model.dtype must be one of"):
    ddpm.make_model(make_config(**{"model.dtype": "float16"}).model, (8, 8, 1), nnx.Rngs(0))


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
  """A U-Net DDPM trained on 8 images until it copies them; its workdir and training set.

  One device: 4 forced CPU devices on 2 cores would quadruple the per-step overhead of so small
  a model, and the sharded step is checked above.
  """
  workdir = tmp_path_factory.mktemp("memorized")
  images = eight_images()
  config = make_config(num_train_steps=1200, checkpoint_every_steps=1200)
  loop.train(config, workdir, ddpm.make_trainer(config), data=as_data(images), mesh=one_device())
  return workdir, images, config


def test_ddpm_memorizes_eight_images(memorized):
  workdir, images, config = memorized
  folder = sampling.sample(config, workdir, ddpm.make_trainer(config), mesh=one_device())
  samples = np.concatenate([np.load(path)["images"] for path in sorted(folder.glob("*.npz"))])
  assert samples.shape == (32, SIZE, SIZE, 1) and samples.dtype == np.uint8
  values, indices = top_k_correlation(samples, images, k=1, progress=False)
  best = values[:, 0]
  assert np.mean(best > 0.95) >= 0.75, np.round(best, 3)
  assert len(set(indices[best > 0.95, 0].tolist())) >= 6  # Copies of most of the images.
  # The training images are unlike each other: a match is a copy, not a look-alike.
  correlation = np.corrcoef(images.reshape(NUM_IMAGES, -1).astype(np.float64))
  assert np.abs(correlation[~np.eye(NUM_IMAGES, dtype=bool)]).max() < 0.7


def test_sample_workflow_writes_npz_that_the_audit_reads(memorized, tmp_path):
  workdir, images, _ = memorized
  train_file = tmp_path / "train.npy"
  np.save(train_file, images)
  # Sampled on all 4 devices (split by rows), chunked: 12 = 8 + 4.
  sample_config = make_config(workflow="sample", num_samples=12, sample_batch_size=8,
                              **{"data.source": str(train_file)})
  folder = workflows.run(sample_config, workdir)
  assert sorted(p.name for p in folder.iterdir()) == ["samples_00000.npz", "samples_00001.npz"]
  with np.load(folder / "samples_00001.npz") as stored:
    assert stored["images"].shape == (4, SIZE, SIZE, 1) and stored["images"].dtype == np.uint8
    assert int(stored["step"]) == 1200 and int(stored["seed"]) == 0
  assert (workdir / sampling.GRIDS / "samples_step_00001200.png").exists()

  audit_config = default.get_config()
  audit_config.synthetic = str(folder)
  audit_config.train = str(train_file)
  audit_config.audit.progress = False
  audit_config.audit.num_pairs = 2
  workflows.run(audit_config, tmp_path / "audit")
  summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
  assert summary["synthetic"]["count"] == 12 and summary["train"]["count"] == NUM_IMAGES
  assert summary["synthetic"]["image_shape"] == [SIZE, SIZE, 1]
  assert summary["fraction_above"]["0.95"] >= 0.5


def test_3d_model_trains_on_volumes_and_samples_at_their_shape(tmp_path):
  volumes = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 8, 2), dtype=np.uint8)
  config = make_config(num_train_steps=2, batch_size=4, log_every_steps=1, ema_decay=0.5,
                       num_samples=4, sample_batch_size=4,
                       **{"data.downsample": 2, "sample.num_steps": 2})
  result = loop.train(config, tmp_path, ddpm.make_trainer(config), data=as_data(volumes))
  assert result.step == 2 and np.isfinite(result.metrics["loss"])
  assert result.state.model.dims == 3
  folder = sampling.sample(config, tmp_path, ddpm.make_trainer(config))
  with np.load(folder / "samples_00000.npz") as stored:
    assert stored["images"].shape == (4, 8, 8, 8, 2)  # The data's shape, not the model's 4^3.
    block = stored["images"][0, :2, :2, :2, 0]
    assert (block == block[0, 0, 0]).all()  # Each model voxel fills a 2x2x2 block.


def test_paper_configs_build_the_paper_models():
  from configs import brats20_ddpm, brats20_ddpm_3d, brats21_ddpm, cxr_ddpm
  for module, source in ((cxr_ddpm, "tfds:cxr_pneumonia/256:train"),
                         (brats20_ddpm, "tfds:brats2020/slices:train"),
                         (brats21_ddpm, "tfds:brats2021/slices:train")):
    config = module.get_config()
    assert config.data.source == source and config.workflow == "train"
    assert (config.model.model_channels, config.model.num_res_blocks) == (64, 3)
    assert config.model.channel_mult == (1, 1, 2, 2, 4, 4)
    # guided-diffusion's model_and_diffusion_defaults() under the authors' flags.
    assert config.model.attention_resolutions == (16, 8)
    assert (config.model.num_heads, config.model.num_head_channels) == (4, -1)
    assert config.model.use_scale_shift_norm is True
    assert config.model.resblock_updown is False and config.model.use_new_attention_order is False
    assert config.model.dropout == 0.0
    assert (config.sample.method, config.sample.variance) == ("ddpm", "large")
    assert (config.diffusion.schedule, config.diffusion.num_steps) == ("linear", 4000)
    assert (config.optimizer.learning_rate, config.batch_size, config.ema_decay) == (
        1e-4, 32, 0.9999)
    assert (config.optimizer.warmup_steps, config.optimizer.grad_clip_norm,
            config.optimizer.weight_decay) == (0, 0.0, 0.0)
  # The BraTS model (five channels) and the 3D one are built without allocating their weights.
  config = brats20_ddpm.get_config()
  model = nnx.eval_shape(lambda: ddpm.make_model(config.model, (256, 256, 5), nnx.Rngs(0)))
  assert model.in_channels == model.out_channels == 5
  assert unet.count_parameters(model) == 41_125_637  # tests/test_unet.py's guided-diffusion count
  assert model.middle_attention.num_heads == 4 and model.middle_in.use_scale_shift_norm
  config = brats20_ddpm_3d.get_config()
  model = nnx.eval_shape(lambda: ddpm.make_model(config.model, (40, 60, 60, 5), nnx.Rngs(0)))
  assert model.dims == 3
  assert model.middle_attention.num_heads == 4 and model.middle_in.use_scale_shift_norm
