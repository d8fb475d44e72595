r"""memjax on one accelerator, in one process tree: the figures that only a GPU (or TPU) can give.

  python tools/gpu_check.py                        # every section, < 6 minutes on one H200
  python tools/gpu_check.py --sections=exactness,search
  python tools/gpu_check.py --stylegan2_reference=/path/to/stylegan2-ada-pytorch

Prints one JSON line per figure: {"section", "figure", "value", "unit", and where there is one,
"target" and "ok"}, then a last line with every failed target. Sections, each in a subprocess with
its own time limit so that one hung compile cannot stop the rest:

* exactness: the split-product probe on this device, and searches with precision "auto",
  "bfloat16x3" and "float32" against float64 numpy, with exact and noisy copies planted:
  256x256 (256 x 4,000), 64x64 (1,000 x 20,000), the README's phantoms (64x64, 98 x 400) and
  16-bit MNI152 slices (where nilearn is installed). Targets: every value within 1e-9 of
  float64 (the reported values are rescored in float64), exact copies exactly 1, the planted
  copies found; the kernel's own float32 values are printed beside them.
* search: 1,000 synthetic x 22,000 training slices of 256x256 uint8 (the paper's scale), memjax
  against a PyTorch script (float32 normalize, mm, topk over blocks streamed from pinned host
  memory) and against the host-to-device copy of the training set (pinned and pageable). Then
  the whole paper-scale audit: 100,000 synthetic images against the same 22,000.
  Targets: <= 1.0x the pinned PyTorch script, <= 1.5x the pinned copy, 100,000 x 22,000 <= 5 s.
* ddpm: the paper's U-Net DDPM (256x256x1, batch 32): time to the first finished step from a
  fresh process state, then steps/s in float32 and bfloat16 compute, against diffusers'
  UNet2DModel of the same layout in float32 and bf16 autocast (when diffusers is installed).
  Targets: first step <= 60 s, bfloat16 steps/s >= PyTorch bf16 autocast.
* stylegan2: the `cxr` config's plain step (Gmain + Dmain, batch 32), against
  stylegan2-ada-pytorch's networks with their CUDA ops when --stylegan2_reference names a
  checkout. Target: >= the reference.

A bare GPU machine may lack some of memjax's dependencies (ml_collections, grain, array_record,
tensorboardX, nibabel) and the peers (torch, diffusers, the StyleGAN2 checkout): whatever a
section misses is named in a "skipped" line, and the other sections run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # memjax and configs/ from this checkout
sys.path.insert(0, str(ROOT / "tools"))

SECTIONS = ("exactness", "search", "ddpm", "stylegan2")
TIME_LIMITS = {"exactness": 50, "search": 110, "ddpm": 130, "stylegan2": 60}  # 350 s in all


def emit(section: str, figure: str, value, unit: str = "", target: str | None = None,
         ok: bool | None = None, **extra) -> None:
  line = {"section": section, "figure": figure, "value": value, "unit": unit}
  if target is not None:
    line["target"] = target
    line["ok"] = bool(ok)
  line.update(extra)
  print(json.dumps(line), flush=True)


def _skip(section: str, why: str) -> None:
  emit(section, "skipped", why)


def _best_of(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def _images(rng: np.random.Generator, count: int, side: int) -> np.ndarray:
  """uint8 images with an offset, smooth structure and texture, like MRI slices and x-rays."""
  coarse = rng.standard_normal((count, side // 16, side // 16)).astype(np.float32)
  smooth = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)
  texture = rng.standard_normal((1, side, side)).astype(np.float32)
  images = 100.0 + 40.0 * smooth + 15.0 * np.roll(texture, rng.integers(0, side), axis=2)
  return np.clip(images, 0, 255).astype(np.uint8)


def _plant(rng, train: np.ndarray, synthetic: np.ndarray, copies: int) -> np.ndarray:
  """The first `copies` synthetic images become exact copies, the next `copies` noisy ones."""
  picked = rng.choice(len(train), 2 * copies, replace=False)
  synthetic[:copies] = train[picked[:copies]]
  top = float(np.iinfo(train.dtype).max)
  noisy = train[picked[copies:]].astype(np.float32) + top / 40 * rng.standard_normal(
      (copies,) + train.shape[1:]).astype(np.float32)
  synthetic[copies:2 * copies] = np.clip(noisy, 0, top).astype(train.dtype)
  return picked


def _float64_top_k(synthetic: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
  def unit(x):
    x = x.reshape(len(x), -1).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
  a = unit(synthetic)
  best = np.full((len(a), k), -np.inf)
  for start in range(0, len(train), 4096):
    scores = a @ unit(train[start:start + 4096]).T
    best = -np.sort(-np.concatenate([best, scores], axis=1), axis=1)[:, :k]
  return best


def _phantom_case(rng, num_synthetic: int, num_train: int):
  """The README's phantoms (tools/make_example_data.py) as uint8, with copies planted."""
  import make_example_data  # pylint: disable=g-import-not-at-top
  as_uint8 = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8)
  train = as_uint8(np.stack([make_example_data.phantom(rng, 64) for _ in range(num_train)]))
  synthetic = as_uint8(np.stack([make_example_data.phantom(rng, 64)
                                 for _ in range(num_synthetic)]))
  return synthetic, train


def _mni152_case(rng):
  """16-bit axial slices of nilearn's MNI152 template (2 mm), with copies planted; None without
  nilearn."""
  try:
    from nilearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  volume = datasets.load_mni152_template(resolution=2).get_fdata()
  volume = np.round(volume / volume.max() * 65535).astype(np.uint16)
  axial = np.moveaxis(volume[:, :, 15:80], 2, 0)
  train, synthetic = axial[0::2].copy(), axial[1::2].copy()
  return synthetic, train


def check_exactness(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax.memorization import correlation  # pylint: disable=g-import-not-at-top
  from memjax.memorization import precision as precision_lib  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  emit("exactness", "device", f"{device.platform} {device.device_kind}",
       jax_version=jax.__version__, devices=jax.device_count())
  worst, weakest = precision_lib._probe_split_products(device)  # pylint: disable=protected-access
  emit("exactness", "split probe: largest difference from float64", worst, target="<= 5e-6",
       ok=worst <= precision_lib.PROBE_TOLERANCE)
  emit("exactness", "split probe: lowest exact copy", weakest, target=">= 1 - 1e-6",
       ok=weakest >= 1 - 1e-6)
  mesh = parallel.data_mesh(1)
  emit("exactness", "auto resolves to", correlation.resolve_precision("auto", mesh))
  rng = np.random.default_rng(0)
  sizes = ((64, 40, 500), (64, 100, 2000)) if args.small else ((256, 256, 4000), (64, 1000, 20000))
  cases = []
  for side, num_synthetic, num_train in sizes:
    cases.append((f"{side}x{side} {num_synthetic} x {num_train}", _images(rng, num_train, side),
                  _images(rng, num_synthetic, side)))
  synthetic, train = _phantom_case(rng, 98, 400)
  cases.append(("phantoms 98 x 400", train, synthetic))
  mni152 = _mni152_case(rng)
  if mni152 is None:
    _skip("exactness", "MNI152 slices: nilearn is not installed")
  else:
    cases.append((f"MNI152 uint16 {len(mni152[0])} x {len(mni152[1])}", mni152[1], mni152[0]))
  for case, train, synthetic in cases:
    copies = min(16, len(synthetic) // 2)
    picked = _plant(rng, train, synthetic, copies)
    reference = _float64_top_k(synthetic, train, 5)
    for precision in ("auto", "bfloat16x3", "float32"):
      kernel = correlation.search_correlation(synthetic, train, 5, mesh=mesh, precision=precision,
                                              refine=False)
      result = correlation.search_correlation(synthetic, train, 5, mesh=mesh, precision=precision)
      kernel_error = float(np.max(np.abs(kernel.values - reference)))
      error = float(np.max(np.abs(result.values - reference)))
      lowest = float(result.values[:copies, 0].min())
      # The exact copies' sources (a noisy copy of a slice may match its neighbour better).
      found = bool(np.all(result.indices[:copies, 0] == picked[:copies]))
      name = f"{case} {precision} ({result.precision})"
      emit("exactness", f"{name}: largest difference from float64", error, target="<= 1e-9",
           ok=error <= 1e-9, kernel_alone=kernel_error, searched_again=result.searched_again,
           kernel_lowest_exact_copy=float(kernel.values[:copies, 0].min()))
      emit("exactness", f"{name}: lowest exact copy", lowest, target="== 1",
           ok=lowest == 1.0 and found, copies_found=found)


def _torch_search(torch, synthetic_host, train_host, k: int, block: int = 4096):
  """The plain PyTorch search: float32 normalize, mm, topk, training blocks streamed in."""
  device = "cuda"
  s = torch.from_numpy(synthetic_host.reshape(len(synthetic_host), -1)).to(device).float()
  s = s - s.mean(dim=1, keepdim=True)
  s = s / s.norm(dim=1, keepdim=True)
  best_values = torch.full((len(s), k), -float("inf"), device=device)
  best_index = torch.full((len(s), k), -1, dtype=torch.int64, device=device)
  for start in range(0, len(train_host), block):
    t = train_host[start:start + block].to(device, non_blocking=True).float()
    t = t - t.mean(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    values, index = torch.topk(s @ t.T, k, dim=1)
    values = torch.cat([best_values, values], dim=1)
    index = torch.cat([best_index, index + start], dim=1)
    best_values, order = torch.topk(values, k, dim=1)
    best_index = torch.gather(index, 1, order)
  torch.cuda.synchronize()
  return best_values.cpu().numpy(), best_index.cpu().numpy()


def check_search(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax.memorization import correlation  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  side, num_train, k = (32, 2000, 5) if args.small else (256, args.num_train, 5)
  num_synthetic, many = (100, 5000) if args.small else (1000, 100_000)
  train = _images(rng, num_train, side)
  synthetic = _images(rng, num_synthetic, side)
  picked = _plant(rng, train, synthetic, 8)
  mesh = parallel.data_mesh(1)
  budget = correlation.search_budget(mesh)
  emit("search", "budget", str(budget), precision=correlation.resolve_precision("auto", mesh))

  def search(**kwargs):
    return correlation.search_correlation(synthetic, train, k, mesh=mesh, **kwargs)

  start = time.perf_counter()
  result = search()
  first = time.perf_counter() - start
  size = f"{num_synthetic:,} x {num_train:,}"
  emit("search", f"{size} first call (compiles)", round(first, 3), "s",
       copies_found=bool(np.all(result.indices[:16, 0] == picked)))
  steady = _best_of(search, 3)
  emit("search", f"{size} memjax", round(steady, 4), "s")
  if budget.staging:
    unstaged = _best_of(lambda: search(budget=dataclasses.replace(
        budget, staging=None)), 2)
    emit("search", f"{size} memjax without pinned staging", round(unstaged, 4), "s")

  device = mesh.devices.flat[0]
  on_device = NamedSharding(mesh, PartitionSpec())
  pageable = _best_of(lambda: jax.device_put(train, on_device).block_until_ready(), 2)
  emit("search", "copy floor: training set from pageable numpy", round(pageable, 4), "s",
       gb_per_s=round(train.nbytes / pageable / 1e9, 1))
  kinds = {memory.kind for memory in device.addressable_memories()}
  pinned_copy = None
  if "pinned_host" in kinds:
    pinned = jax.device_put(train, NamedSharding(mesh, PartitionSpec(), memory_kind="pinned_host"))
    pinned.block_until_ready()
    pinned_copy = _best_of(lambda: jax.device_put(pinned, on_device).block_until_ready(), 3)
    del pinned
    emit("search", "copy floor: training set from pinned host memory", round(pinned_copy, 4),
         "s", gb_per_s=round(train.nbytes / pinned_copy / 1e9, 1))
    emit("search", "memjax / pinned copy", round(steady / pinned_copy, 2), "x", target="<= 1.5",
         ok=steady / pinned_copy <= 1.5)
  else:
    _skip("search", f"no pinned_host memory on {device.platform} (memories: {sorted(kinds)})")

  try:
    import torch  # pylint: disable=g-import-not-at-top
    if not torch.cuda.is_available():
      raise ImportError("torch has no CUDA device")
  except ImportError as e:
    _skip("search", f"the PyTorch script: {e}")
  else:
    flat = torch.from_numpy(train.reshape(num_train, -1))
    for name, host in (("pinned", flat.pin_memory()), ("pageable", flat)):
      torch_values, _ = _torch_search(torch, synthetic, host, k)
      seconds = _best_of(lambda host=host: _torch_search(torch, synthetic, host, k), 3)
      emit("search", f"PyTorch {torch.__version__} script, {name} host memory",
           round(seconds, 4), "s",
           agrees_to=float(np.max(np.abs(torch_values - result.values))))
      if name == "pinned":
        emit("search", "memjax / PyTorch pinned", round(steady / seconds, 2), "x",
             target="<= 1.0", ok=steady / seconds <= 1.0)
    del flat

  del synthetic
  # The paper's number of samples: different images made cheaply from the training slices
  # (rows taken in a shuffled order, every pixel shifted by a per-image amount, wrapping).
  order = rng.integers(0, num_train, many)
  shift = (np.arange(many, dtype=np.uint32) * 37 % 251).astype(np.uint8)
  synthetic = train[order]
  synthetic += shift[:, None, None]
  start = time.perf_counter()
  result = correlation.search_correlation(synthetic, train, k, mesh=mesh)
  whole = time.perf_counter() - start
  emit("search", f"paper-scale audit search: {many:,} x {num_train:,} of {side}x{side}", round(whole, 2),
       "s", target="<= 5", ok=whole <= 5.0, precision=result.precision,
       tflops_float32_equivalent=round(2 * many * num_train * side * side / whole / 1e12, 1))


def _ddpm_config(timing, dtype: str, small: bool):
  """The paper's DDPM (configs/cxr_ddpm.py), or the demo's small U-Net with --small."""
  config = timing.paper_ddpm_config(batch_size=8 if small else 32, dtype=dtype)
  if small:
    config.model.model_channels = 32
    config.model.channel_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (8,)
    config.model.num_head_channels = 32
  return config, ((32, 32, 3) if small else timing.PAPER_DDPM_IMAGE_SHAPE)


def _torch_ddpm_args(config, shape, dtype: str):
  """bench_train's arguments for diffusers' UNet2DModel laid out as `config`'s U-Net."""
  model = config.model
  return argparse.Namespace(
      image_size=shape[0], channels=shape[-1], batch_size=int(config.batch_size),
      model_channels=model.model_channels, channel_mult=tuple(model.channel_mult),
      num_res_blocks=model.num_res_blocks,
      attention_resolutions=tuple(model.attention_resolutions),
      # diffusers counts channels per head: guided-diffusion's num_heads on the widest level.
      num_head_channels=(model.num_head_channels if model.num_head_channels != -1 else
                         model.model_channels * max(model.channel_mult) // model.num_heads),
      use_scale_shift_norm=int(bool(model.use_scale_shift_norm)),
      diffusion_steps=config.diffusion.num_steps, warmup=2, steps=5, dtype=dtype, device="cuda")


def check_ddpm(args) -> None:
  try:
    from memjax.train import timing  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    _skip("ddpm", f"{e.name} is not installed (pip install {e.name})")
    return
  rates = {}
  for dtype in ("float32", "bfloat16"):
    config, shape = _ddpm_config(timing, dtype, args.small)
    figures = timing.time_to_first_step(config, shape, num_devices=1, timed_steps=5)
    name = f"{'demo' if args.small else 'paper'} DDPM {dtype}"
    for phase in ("trainer_s", "init_s", "first_step_s"):
      emit("ddpm", f"{name}: {phase}", round(figures[phase], 2), "s")
    first = figures["time_to_first_step_s"]
    emit("ddpm", f"{name}: time to first finished step", round(first, 1), "s",
         target="<= 60" if dtype == "float32" else None, ok=first <= 60,
         parameters=figures["num_params"], batch=figures["batch_size"])
    rates[dtype] = figures["steps_per_s"]
    emit("ddpm", f"{name}: steps/s", round(rates[dtype], 3), "steps/s")
  try:
    import bench_train  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import diffusers  # pylint: disable=g-import-not-at-top,unused-import
    if not torch.cuda.is_available():
      raise ImportError("torch has no CUDA device", name="torch with CUDA")
  except ImportError as e:
    _skip("ddpm", f"PyTorch peer: {e.name or e} is not installed (pip install torch diffusers)")
    return
  for dtype in ("float32", "bfloat16"):
    config, shape = _ddpm_config(timing, dtype, args.small)
    result = bench_train.bench_pytorch(_torch_ddpm_args(config, shape, dtype))
    if isinstance(result, str):
      _skip("ddpm", f"PyTorch {dtype}: {result}")
      continue
    seconds, parameters = result
    peer = "bf16 autocast" if dtype == "bfloat16" else "float32"
    emit("ddpm", f"PyTorch diffusers UNet2DModel {peer}: steps/s", round(1 / seconds, 3),
         "steps/s", parameters=parameters)
    ratio = rates[dtype] * seconds
    emit("ddpm", f"memjax {dtype} / PyTorch {peer}", round(ratio, 2), "x",
         target=">= 1.0" if dtype == "bfloat16" else None, ok=ratio >= 1.0)


def check_stylegan2(args) -> None:
  try:
    import bench_train  # pylint: disable=g-import-not-at-top
    from configs import cxr_stylegan2, demo_stylegan2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    _skip("stylegan2", f"{e.name} is not installed (pip install {e.name})")
    return
  name, module, shape = (("demo", demo_stylegan2, (32, 32, 3)) if args.small
                         else ("cxr", cxr_stylegan2, (256, 256, 1)))
  config = module.get_config()
  config.batch_size = 32
  plain = config.copy_and_resolve_references()
  plain.ada.augment = "none"
  plain.loss.pl_weight = plain.loss.r1_gamma = plain.loss.style_mixing_prob = 0.0
  start = time.perf_counter()
  seconds = bench_train.bench_stylegan2_memjax(plain, shape, 5, [("plain", 1)])["plain"]
  emit("stylegan2", f"memjax plain step ({name}, batch 32)", round(seconds, 4), "s/step",
       wall_with_compile_s=round(time.perf_counter() - start, 1))
  if not args.stylegan2_reference:
    _skip("stylegan2", "the reference: give --stylegan2_reference=PATH (a stylegan2-ada-pytorch "
          "checkout; torch with CUDA)")
    return
  reference = bench_train.bench_stylegan2_pytorch(plain, shape, args.stylegan2_reference, 5,
                                                  device="cuda")
  if isinstance(reference, str):
    _skip("stylegan2", f"the reference: {reference}")
    return
  emit("stylegan2", "stylegan2-ada-pytorch plain step", round(reference, 4), "s/step")
  emit("stylegan2", "memjax speed / reference speed", round(reference / seconds, 2), "x",
       target=">= 1.0", ok=reference / seconds >= 1.0)


CHECKS = {"exactness": check_exactness, "search": check_search, "ddpm": check_ddpm,
          "stylegan2": check_stylegan2}


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated, of {', '.join(SECTIONS)}")
  parser.add_argument("--section", default=None, help=argparse.SUPPRESS)  # one, in this process
  parser.add_argument("--num_train", type=int, default=22_000)
  parser.add_argument("--small", action="store_true",
                      help="tiny sizes, to try the script itself on a CPU")
  parser.add_argument("--stylegan2_reference", default=None)
  parser.add_argument("--time_scale", type=float, default=1.0,
                      help="multiplies every section's time limit")
  return parser.parse_args()


def main() -> int:
  args = _parse_args()
  if args.section:
    CHECKS[args.section](args)
    return 0
  failed = []
  for section in args.sections.split(","):
    if section not in CHECKS:
      raise SystemExit(f"unknown section {section!r}; expected some of {', '.join(SECTIONS)}")
    limit = TIME_LIMITS[section] * args.time_scale
    command = [sys.executable, __file__, f"--section={section}", f"--num_train={args.num_train}"]
    if args.small:
      command.append("--small")
    if args.stylegan2_reference:
      command.append(f"--stylegan2_reference={args.stylegan2_reference}")
    start = time.perf_counter()
    try:
      completed = subprocess.run(command, capture_output=True, text=True, timeout=limit,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"), check=False)
      output, code = completed.stdout, completed.returncode
      errors = completed.stderr
    except subprocess.TimeoutExpired as e:
      output = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
      code, errors = None, f"timed out after {limit:.0f} s"
    for line in output.splitlines():
      print(line, flush=True)
      if line.startswith("{") and json.loads(line).get("ok") is False:
        failed.append(json.loads(line)["figure"])
    if code != 0:
      tail = (errors or "").strip().splitlines()[-3:]
      emit(section, "error", code if code is not None else "timeout", detail=" | ".join(tail))
      failed.append(f"{section}: did not finish")
    emit(section, "section wall time", round(time.perf_counter() - start, 1), "s")
  emit("all", "failed targets", failed, ok=not failed, target="none")
  return 0


if __name__ == "__main__":
  sys.exit(main())
