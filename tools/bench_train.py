r"""Training steps per second of memjax's U-Net DDPM against PyTorch with the same architecture.

  pip install torch==2.13.0 diffusers   # the PyTorch side; see below
  python tools/bench_train.py                                     # 64x64x3, batch 8
  python tools/bench_train.py --image_size=32 --batch_size=16 --model_channels=32 \
      --channel_mult=1,2,2 --num_res_blocks=1 --attention_resolutions=8   # the demo's model

Both sides run one full DDPM training step per call, on the same batch size and resolution: a
uniformly drawn timestep per image, the noise-prediction loss, backward, AdamW, and an EMA update
of the weights. memjax runs `memjax.train.ddpm`'s step through the shared loop's compiled step
(one device); PyTorch runs diffusers' `UNet2DModel` configured as guided-diffusion's UNetModel
(the layout memjax's U-Net follows), whose parameter count is printed beside memjax's to show
that the two networks match. Each side is warmed up (compilation, allocator), then timed over
--steps steps; the figure is steps per second and the ratio memjax / PyTorch. PyTorch runs on
the GPU when it sees one. --dtype=bfloat16 compares mixed precision: memjax with
config.model.dtype=bfloat16, PyTorch under torch.autocast(device, dtype=torch.bfloat16) (float32
weights and Adam on both sides).

PyTorch is not a dependency of memjax. `pip install torch==2.13.0` takes a CPU build on this
project's machines; a plain `pip install torch` downloads a multi-GB CUDA build. Without torch
and diffusers the PyTorch side is skipped with a message.

StyleGAN2 (--model=stylegan2, --stylegan2_config=demo|cxr|brats20):

  python tools/bench_train.py --model=stylegan2 --stylegan2_config=demo
  python tools/bench_train.py --model=stylegan2 --stylegan2_config=cxr --batch_size=8 \
      --stylegan2_reference=/path/to/stylegan2-ada-pytorch

memjax's StyleGAN2 training is timed per step variant (no regularizer; path length every 4th
step; path length and R1 every 16th) with the config's ADA on, and the amortized rate over 16
steps is printed: every step is one generator and one discriminator update, so generator and
discriminator steps per second are both that rate. With --stylegan2_reference (a checkout of
NVlabs' stylegan2-ada-pytorch and torch) the plain step (Gmain then Dmain: non-saturating loss,
Adam, no regularizer, no augmentation, no style mixing) is also timed on both sides with the
same networks, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # For configs/.


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split(",") if part.strip())


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--model_channels", type=int, default=64)
  parser.add_argument("--channel_mult", type=_ints, default=(1, 2, 2, 2))
  parser.add_argument("--num_res_blocks", type=int, default=2)
  parser.add_argument("--attention_resolutions", type=_ints, default=(16,))
  parser.add_argument("--num_head_channels", type=int, default=64)
  parser.add_argument("--diffusion_steps", type=int, default=1000)
  parser.add_argument("--use_scale_shift_norm", type=int, default=0,
                      help="1: guided-diffusion's scale-shift norm (the paper's), both sides")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="the DDPM's compute dtype (PyTorch: autocast to bfloat16)")
  parser.add_argument("--model", choices=("ddpm", "stylegan2"), default="ddpm")
  parser.add_argument("--stylegan2_config", choices=("demo", "cxr", "brats20"), default="demo")
  parser.add_argument("--stylegan2_reference", default=None,
                      help="a stylegan2-ada-pytorch checkout, for the PyTorch side")
  parser.add_argument("--plain_only", action="store_true",
                      help="StyleGAN2: time only the plain step against PyTorch (skip the "
                           "regularizer variants; for sizes where each step takes a minute)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  return parser.parse_args()


def _time_steps(step, warmup: int, steps: int) -> float:
  """Seconds per step of `step()` (which must block until its step is done) after warm-up."""
  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - start) / steps


def bench_memjax(args: argparse.Namespace) -> tuple[float, int]:
  """(seconds per step, parameters) of memjax's DDPM step on one device."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from configs import default  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax.models import unet  # pylint: disable=g-import-not-at-top
  from memjax.train import ddpm  # pylint: disable=g-import-not-at-top
  from memjax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  config = default.ddpm(default.get_config())
  config.model.model_channels = args.model_channels
  config.model.channel_mult = args.channel_mult
  config.model.num_res_blocks = args.num_res_blocks
  config.model.attention_resolutions = args.attention_resolutions
  config.model.num_head_channels = args.num_head_channels
  config.model.use_scale_shift_norm = bool(args.use_scale_shift_norm)
  config.diffusion.num_steps = args.diffusion_steps
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0
  config.model.dtype = args.dtype
  mesh = parallel.data_mesh(1)
  shape = (args.image_size, args.image_size, args.channels)
  compiled = state_lib.CompiledTrainer(ddpm.make_trainer(config), mesh, shape, seed=0)
  rngs, state = compiled.init()
  images = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, *shape)).astype(np.float32)
  batch = {"image": jax.device_put(images, compiled.rows)}
  holder = {"state": state, "rngs": rngs}

  def step():
    holder["state"], holder["rngs"], metrics = compiled.step(holder["state"], holder["rngs"],
                                                             batch)
    jax.block_until_ready(metrics)

  seconds = _time_steps(step, args.warmup, args.steps)
  model = compiled.module(holder["state"], holder["rngs"]).model
  return seconds, unet.count_parameters(model)


def _diffusers_unet(args: argparse.Namespace):
  """diffusers' UNet2DModel laid out as guided-diffusion's UNetModel (and memjax's UNet)."""
  from diffusers import UNet2DModel  # pylint: disable=g-import-not-at-top
  sides = [args.image_size // 2**level for level in range(len(args.channel_mult))]
  with_attention = [side in args.attention_resolutions for side in sides]
  return UNet2DModel(
      sample_size=args.image_size, in_channels=args.channels, out_channels=args.channels,
      time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in with_attention),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D"
                           for a in reversed(with_attention)),
      block_out_channels=tuple(args.model_channels * m for m in args.channel_mult),
      layers_per_block=args.num_res_blocks, mid_block_scale_factor=1, downsample_padding=1,
      downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu",
      attention_head_dim=None if args.num_head_channels == -1 else args.num_head_channels,
      norm_num_groups=32, norm_eps=1e-5, add_attention=True,
      resnet_time_scale_shift=("scale_shift" if getattr(args, "use_scale_shift_norm", 0)
                               else "default"))


def bench_pytorch(args: argparse.Namespace) -> tuple[float, int] | str:
  """(seconds per step, parameters) of the same step in PyTorch, or why it was skipped."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import diffusers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return (f"skipped: {e.name} is not installed. pip install torch==2.13.0 diffusers (a CPU "
            "build here; a plain `pip install torch` downloads a multi-GB CUDA build)")
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = _diffusers_unet(args).to(device)
  ema = [p.detach().clone() for p in model.parameters()]
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  betas = torch.linspace(1e-4, 0.02, args.diffusion_steps, dtype=torch.float64)
  alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)
  images = torch.from_numpy(np.random.default_rng(0).uniform(
      -1, 1, (args.batch_size, args.channels, args.image_size, args.image_size)).astype(np.float32)
  ).to(device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

  def step():
    t = torch.randint(0, args.diffusion_steps, (args.batch_size,), device=device)
    noise = torch.randn_like(images)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * images + (1 - a).sqrt() * noise
    with autocast:
      prediction = model(noisy, t).sample
    loss = torch.mean((prediction.float() - noise) ** 2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      # pylint: disable-next=protected-access
      torch._foreach_lerp_(ema, list(model.parameters()), 1 - 0.9999)
    if device == "cuda":
      torch.cuda.synchronize()

  seconds = _time_steps(step, args.warmup, args.steps)
  return seconds, sum(p.numel() for p in model.parameters())


def _stylegan2_config(args: argparse.Namespace):
  import importlib  # pylint: disable=g-import-not-at-top
  name = {"demo": "demo_stylegan2", "cxr": "cxr_stylegan2", "brats20": "brats20_stylegan2"}[
      args.stylegan2_config]
  config = importlib.import_module(f"configs.{name}").get_config()
  if args.batch_size_given:
    config.batch_size = args.batch_size
  shape = {"demo": (32, 32, 3), "cxr": (256, 256, 1), "brats20": (256, 256, 5)}[
      args.stylegan2_config]
  return config, shape


def bench_stylegan2_memjax(config, shape, steps: int, variants) -> dict:
  """Seconds per step of each step variant of memjax's StyleGAN2 on one device."""
  import jax  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import stylegan2  # pylint: disable=g-import-not-at-top
  compiled = state_lib.CompiledTrainer(stylegan2.make_trainer(config), parallel.data_mesh(1), shape,
                                       seed=0)
  rngs, state = compiled.init()
  images = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, *shape)).astype(np.float32)
  batch = {"image": jax.device_put(images, compiled.rows)}
  holder = {"state": state, "rngs": rngs}
  seconds = {}
  for name, step_number in variants:
    def step(step_number=step_number):
      holder["state"], holder["rngs"], metrics = compiled.step(holder["state"], holder["rngs"],
                                                               batch, step_number)
      jax.block_until_ready(metrics)
    seconds[name] = _time_steps(step, 1, steps)
  return seconds


def bench_stylegan2_pytorch(config, shape, reference: str, steps: int) -> float | str:
  """Seconds per plain step (Gmain, Dmain) of stylegan2-ada-pytorch's networks, or why not."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "skipped: torch is not installed (pip install torch==2.13.0, a CPU build here)"
  sys.path.insert(0, reference)
  try:
    from training import networks  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return f"skipped: {reference} is not a stylegan2-ada-pytorch checkout ({e})"
  model = config.model
  size, channels = shape[0], shape[-1]
  torch.manual_seed(0)
  g = networks.Generator(z_dim=model.z_dim, c_dim=0, w_dim=model.w_dim, img_resolution=size,
                         img_channels=channels, mapping_kwargs=dict(num_layers=model.map_layers),
                         synthesis_kwargs=dict(channel_base=model.channel_base,
                                               channel_max=model.channel_max, num_fp16_res=0,
                                               conv_clamp=int(model.conv_clamp))).train()
  d = networks.Discriminator(c_dim=0, img_resolution=size, img_channels=channels,
                             channel_base=model.channel_base, channel_max=model.channel_max,
                             num_fp16_res=0, conv_clamp=int(model.conv_clamp),
                             epilogue_kwargs=dict(mbstd_group_size=model.mbstd_group_size)
                             ).train()
  lr = float(config.optimizer.learning_rate)
  g_opt = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
  d_opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
  n = config.batch_size
  reals = torch.from_numpy(np.random.default_rng(0).uniform(
      -1, 1, (n, channels, size, size)).astype(np.float32))
  softplus = torch.nn.functional.softplus

  def step():
    loss = softplus(-d(g(torch.randn(n, model.z_dim), None), None)).mean()
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    with torch.no_grad():
      fakes = g(torch.randn(n, model.z_dim), None)
    loss = softplus(d(fakes, None)).mean() + softplus(-d(reals, None)).mean()
    d_opt.zero_grad(set_to_none=True)
    loss.backward()
    d_opt.step()

  return _time_steps(step, 1, steps)


def main_stylegan2(args: argparse.Namespace) -> None:
  config, shape = _stylegan2_config(args)
  print(f"StyleGAN2 training step ({args.stylegan2_config}), batch {config.batch_size} of "
        f"{shape[0]}x{shape[1]}x{shape[2]}; channel_base {config.model.channel_base}, "
        f"channel_max {config.model.channel_max}; {os.cpu_count()} CPUs; {args.steps} timed "
        "steps per variant after 1")
  pl, r1 = config.loss.pl_interval, config.loss.r1_interval
  if not args.plain_only:
    variants = [("plain", 1), ("path length", pl), ("path length + R1", r1)]
    seconds = bench_stylegan2_memjax(config, shape, args.steps, variants)
    for name, value in seconds.items():
      print(f"memjax {name:17s}: {value:8.3f} s/step  {config.batch_size / value:8.2f} images/s")
    per_16 = (seconds["plain"] * (16 - 16 // pl) + seconds["path length"] * (16 // pl - 16 // r1)
              + seconds["path length + R1"] * (16 // r1))
    rate = 16 / per_16
    print(f"memjax amortized over 16 steps: {rate:.3f} steps/s (= generator steps/s = "
          f"discriminator steps/s), {rate * config.batch_size:.2f} images/s")
  if not args.stylegan2_reference:
    print("PyTorch: skipped (give --stylegan2_reference=PATH to a stylegan2-ada-pytorch "
          "checkout, with torch installed)")
    return
  plain = config.copy_and_resolve_references()
  plain.ada.augment = "none"
  plain.loss.pl_weight = plain.loss.r1_gamma = plain.loss.style_mixing_prob = 0.0
  memjax_plain = bench_stylegan2_memjax(plain, shape, args.steps, [("plain", 1)])["plain"]
  torch_plain = bench_stylegan2_pytorch(plain, shape, args.stylegan2_reference, args.steps)
  print(f"plain step (Gmain + Dmain, no regularizer or augmentation): memjax "
        f"{1 / memjax_plain:.3f} steps/s")
  if isinstance(torch_plain, str):
    print(f"PyTorch: {torch_plain}")
    return
  import torch  # pylint: disable=g-import-not-at-top
  print(f"PyTorch {torch.__version__} (stylegan2-ada-pytorch networks): {1 / torch_plain:.3f} "
        f"steps/s ({torch.get_num_threads()} threads); memjax speed / PyTorch speed = "
        f"{torch_plain / memjax_plain:.2f}")


def main():
  args = _parse_args()
  args.batch_size_given = "--batch_size" in " ".join(sys.argv)
  if args.model == "stylegan2":
    main_stylegan2(args)
    return
  print(f"U-Net DDPM training step, batch {args.batch_size} of {args.image_size}x"
        f"{args.image_size}x{args.channels}; model_channels {args.model_channels}, channel_mult "
        f"{args.channel_mult}, num_res_blocks {args.num_res_blocks}, attention at "
        f"{args.attention_resolutions}; {args.dtype}; {os.cpu_count()} CPUs; {args.steps} timed "
        f"steps after {args.warmup}")
  memjax_seconds, memjax_params = bench_memjax(args)
  print(f"memjax  (jax, Flax NNX): {1 / memjax_seconds:7.3f} steps/s  "
        f"{args.batch_size / memjax_seconds:8.2f} images/s  {memjax_params:,} parameters")
  torch_result = bench_pytorch(args)
  if isinstance(torch_result, str):
    print(f"PyTorch: {torch_result}")
    return
  torch_seconds, torch_params = torch_result
  import torch  # pylint: disable=g-import-not-at-top
  print(f"PyTorch {torch.__version__} (diffusers UNet2DModel): {1 / torch_seconds:7.3f} steps/s  "
        f"{args.batch_size / torch_seconds:8.2f} images/s  {torch_params:,} parameters "
        f"({torch.get_num_threads()} threads)")
  match = "the same" if torch_params == memjax_params else "DIFFERENT"
  print(f"parameters: {match}; memjax speed / PyTorch speed = {torch_seconds / memjax_seconds:.2f}")


if __name__ == "__main__":
  main()
