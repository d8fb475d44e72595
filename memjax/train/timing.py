"""Time to the first finished training step, and steps/s after it: what a user waits for.

`time_to_first_step(config, image_shape)` builds the trainer of `config.model.name` and times, in
this process, each phase that comes before training runs at speed: building the
`CompiledTrainer` (tracing the training state once), `init()` (its compile and run), the first
step (trace, compile, run, waited for) and the steps after it. Batches are random images on the
data mesh, not a data set, so nothing here reads data, writes checkpoints or logs: the figures
are the model's and the compiler's alone. tools/gpu_check.py and tools/bench_train.py report them.

Importing this module needs jax, flax, optax and absl only (no ml_collections, grain,
array_record, tensorboardX or tqdm); `paper_ddpm_config()` returns an ml_collections
`ConfigDict` where that is installed and a plain attribute dict where it is not.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import Any

from flax import nnx
import jax
import numpy as np

from memjax import parallel

PAPER_DDPM_IMAGE_SHAPE = (256, 256, 1)  # configs/cxr_ddpm.py: Kermany chest x-rays


class Options(dict):
  """A dict whose keys are also attributes, nested: a stand-in for ml_collections' ConfigDict."""

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e

  def __setattr__(self, name: str, value: Any) -> None:
    self[name] = value


def _options(values: dict) -> Any:
  """`values` as a ConfigDict where ml_collections is installed, else as nested `Options`."""
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top
    return ml_collections.ConfigDict(values)
  except ImportError:
    return Options({k: Options(v) if isinstance(v, dict) else v for k, v in values.items()})


def paper_ddpm_config(batch_size: int = 32, dtype: str = "float32") -> Any:
  """The training settings of configs/cxr_ddpm.py (Akbar et al.'s guided-diffusion), as a config.

  The same keys and values as `configs.cxr_ddpm.get_config()` for everything the DDPM trainer
  reads (the U-Net of 256x256x1 images, 41,121,025 parameters: attention at 16 and 8 with 4
  heads, scale-shift norm; 4000 linear diffusion steps sampled with the FIXED_LARGE variance;
  AdamW at 1e-4; EMA 0.9999), without importing configs/*.py; `model.dtype` is `dtype`.
  """
  return _options({
      "seed": 0, "batch_size": int(batch_size), "num_train_steps": 200_000,
      "ema_decay": 0.9999,
      "model": {"name": "ddpm", "model_channels": 64, "channel_mult": (1, 1, 2, 2, 4, 4),
                "num_res_blocks": 3, "attention_resolutions": (16, 8), "num_heads": 4,
                "num_head_channels": -1, "use_scale_shift_norm": True,
                "resblock_updown": False, "use_new_attention_order": False, "dropout": 0.0,
                "dtype": dtype},
      "diffusion": {"schedule": "linear", "num_steps": 4000},
      "sample": {"method": "ddpm", "variance": "large", "num_steps": 0, "eta": 0.0},
      "optimizer": {"learning_rate": 1e-4, "schedule": "constant", "warmup_steps": 0,
                    "final_learning_rate_fraction": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                    "weight_decay": 0.0, "grad_clip_norm": 0.0},
  })


def _make_trainer(config: Any):
  # memjax.train's FAMILIES, without memjax/train/__init__'s make_trainer and its config checks.
  from memjax import train  # pylint: disable=g-import-not-at-top
  name = config.model.name
  if name not in train.FAMILIES:
    raise ValueError(f"config.model.name={name!r} names no trainable model: one of "
                     f"{sorted(train.FAMILIES)}")
  return importlib.import_module(train.FAMILIES[name]).make_trainer(config)


def time_to_first_step(config: Any, image_shape: Sequence[int] = PAPER_DDPM_IMAGE_SHAPE, *,
                       workdir: str | None = None, num_devices: int | None = None,
                       timed_steps: int = 5, seed: int = 0) -> dict[str, Any]:
  """Seconds to a first finished training step of `config`'s model on random images, by phase.

  Args:
    config: a training config (ConfigDict or `paper_ddpm_config()`): model.*, optimizer.*,
      batch_size (global) and the family's own keys.
    image_shape: one example's (H, W, C) or (D, H, W, C), as the model sees it.
    workdir: when given, JAX's persistent compilation cache lives in workdir/.xla_cache (as in
      training runs) unless a cache directory is set already; a second call then shows what a
      re-run waits. None leaves the cache as it is.
    num_devices: devices of the data mesh (None: all); the batch is split over them.
    timed_steps: steps timed after the first, for steps_per_s (0: none).
    seed: of the random images (the model's init uses config.seed).

  Returns:
    A dict: trainer_s (building the CompiledTrainer: tracing the state), init_s (compiling and
    running init), first_step_s (trace, compile and run of step 1, until its metrics are ready),
    time_to_first_step_s (their sum, from an empty process's point of view less imports),
    steps_per_s (of the next `timed_steps` steps; None when 0), step_s (1 / steps_per_s),
    compile_s (first_step_s - step_s: the first step's overhead), loss (of the first step),
    and the run's figures: backend, devices, batch_size, image_shape, dtype, num_params.
  """
  from memjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  if workdir is not None:
    state_lib.use_compilation_cache(workdir)
  image_shape = tuple(int(s) for s in image_shape)
  batch_size = int(config.batch_size)
  mesh = parallel.data_mesh(num_devices)
  trainer = _make_trainer(config)
  if len(trainer.features) != 1:
    raise ValueError(f"the {trainer.name} trainer reads {trainer.features}; time_to_first_step "
                     "makes images only")
  images = np.random.default_rng(seed).uniform(-1, 1, (batch_size, *image_shape))

  start = time.perf_counter()
  compiled = state_lib.CompiledTrainer(trainer, mesh, image_shape, int(config.get("seed", 0)))
  built = time.perf_counter()
  rngs, state = compiled.init()
  jax.block_until_ready(state)
  initialized = time.perf_counter()
  batch = {trainer.features[0]: jax.device_put(images.astype(np.float32), compiled.rows)}
  jax.block_until_ready(batch)
  batched = time.perf_counter()
  state, rngs, metrics = compiled.step(state, rngs, batch, 0)
  metrics = jax.device_get(metrics)
  stepped = time.perf_counter()
  steps_per_s = None
  if timed_steps > 0:
    tick = time.perf_counter()
    for step in range(1, 1 + timed_steps):
      state, rngs, after = compiled.step(state, rngs, batch, step)
    jax.block_until_ready(after)
    steps_per_s = timed_steps / (time.perf_counter() - tick)

  model = getattr(compiled.module(state, rngs), "model", None)  # TrainState's; None for GANs
  num_params = None if model is None else sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  first_step_s = stepped - batched
  step_s = None if steps_per_s is None else 1.0 / steps_per_s
  return {
      "trainer_s": built - start, "init_s": initialized - built, "first_step_s": first_step_s,
      "time_to_first_step_s": (built - start) + (initialized - built) + first_step_s,
      "steps_per_s": steps_per_s, "step_s": step_s,
      "compile_s": None if step_s is None else max(first_step_s - step_s, 0.0),
      "loss": float(metrics["loss"]) if "loss" in metrics else None,
      "backend": jax.default_backend(), "devices": parallel.mesh_size(mesh),
      "batch_size": batch_size, "image_shape": image_shape,
      "dtype": str(config.model.get("dtype") or "float32"), "num_params": num_params,
  }
