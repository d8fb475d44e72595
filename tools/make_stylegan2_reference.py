r"""Writes the StyleGAN2 parity-test reference arrays from NVlabs' stylegan2-ada-pytorch.

  python tools/make_stylegan2_reference.py --reference=/path/to/stylegan2-ada-pytorch \
      --out=tests/data/stylegan2_reference.npz

Torch is needed only for this script (the test that reads its output uses numpy and JAX). The
script imports `training.networks` from an unmodified checkout of
https://github.com/NVlabs/stylegan2-ada-pytorch (nothing of it is copied here), builds tiny
Generators and resnet Discriminators on CPU, randomizes every parameter and buffer that would
otherwise start as a constant, and runs them in eval mode.

The one `.npz` holds two parts.

**Forward passes** (float32, as the reference runs them), at the top level:
  * `G.<name>` and `D.<name>`: every entry of `G.state_dict()` / `D.state_dict()` (the layout of a
    `G_ema` / `D` pickle), float32, in torch's own layouts, nothing renamed or transposed.
  * Inputs: `z` [8, z_dim], `z2` [8, z_dim], `cutoff` (int), `truncation_psi` (0.7), `x_real`
    [8, C, H, W].
  * Outputs: `ws`, `ws_trunc` [8, num_ws, w_dim] (`G.mapping` with psi 1 and 0.7); `img`,
    `img_trunc` (`G(z, None, psi, noise_mode='const')`); `img_nonoise`
    (`G.synthesis(ws, noise_mode='none')`); `img_mix` (`G.synthesis(ws_mix, noise_mode='const')`
    where `ws_mix = ws` with `ws_mix[:, cutoff:]` taken from `G.mapping(z2)`); `d_fake` =
    `D(img)` and `d_real` = `D(x_real)`, both [8, 1]. Images are NCHW, as torch makes them.
  * Construction arguments as int scalars: z_dim, w_dim, img_resolution, img_channels,
    num_mapping_layers, channel_base, channel_max, conv_clamp, mbstd_group_size, num_ws (and
    c_dim = 0). Channels per resolution are min(channel_base // res, channel_max) in both nets.

**Gradients** (the ones R1 and path-length regularization train on), under `grad/<case>/`, for
each case of `GRADIENT_CASES` (the configurations of the outside check that found issue 20, at
reduced channel counts): the state dicts (`G.<name>`, `D.<name>`), the construction arguments,
the inputs `x_real`, `ws` and `pl_noise`, and
  * `d_input_grad`: d/dx of sum(D(x_real)), NCHW;
  * `pl_grad`: d/dws of sum(G.synthesis(ws, noise_mode='const') * pl_noise), the path-length
    gradient of the reference's `accumulate_gradients` (its pl_noise already divided by
    sqrt(H * W));
  * `r1.<name>`: d/dtheta of the R1 penalty sum(d_input_grad^2) for every D parameter (zeros for
    the output bias, which the input gradient does not depend on);
  * `pl_param.<name>` (the paper case only, to keep the file small): d/dtheta of the sum of the
    path lengths sqrt(mean_layers |pl_grad|^2) for every synthesis parameter (the generator's
    transposed convolutions' kernel gradients, second order), and `img_param.<name>`, those of
    sum(G.synthesis(ws) * pl_noise) (first order, as the generator's main loss takes them).
These are computed in float64 (the reference's blocks cast to float32 inside `forward`; that cast
is redirected to float64 for this part only), because a float32 reference is not a reference
here: the derivative of leaky ReLU jumps at 0 and a clamp's at +-conv_clamp, and wherever a
pre-activation lies within float32 rounding of a kink, any float32 implementation may take either
side. The inputs are therefore drawn again (a new seed) until every pre-activation of every
bias_act in the float64 passes keeps a margin of `--kink_margin` (relative to its layer's root
mean square) from each kink; the margin found is stored as `min_kink_margin`. On such inputs a
correct float32 implementation is within a few 1e-7 of the float64 values, and a wrong backward
rule is not.

To keep the file small, all weights and buffers are rounded to values that bfloat16 can represent
(still stored as float32) and `x_real` is uniform in [-1, 1] on a grid of 1/128 steps.
"""

import argparse
import contextlib
import copy
import math
import pathlib
import sys
import types

import numpy as np

BATCH = 8  # Two minibatch-std groups of 4.

# The configurations of the outside check of issue 20 (resolution, channels, mapping layers,
# conv_clamp, minibatch-std channels, batch), at reduced channel counts (channel_base and
# channel_max), batches of 4 (12 where the check had 12) and z/w dimensions of 32 so that the file stays small.
GRADIENT_CASES = {
    "rgb32": dict(img_resolution=32, img_channels=3, num_mapping_layers=4, channel_base=256,
                  channel_max=16, conv_clamp=256, mbstd_num_channels=1, batch=4),
    "gray64": dict(img_resolution=64, img_channels=1, num_mapping_layers=8, channel_base=256,
                   channel_max=16, conv_clamp=256, mbstd_num_channels=1, batch=4),
    "mbstd2_clamp1": dict(img_resolution=32, img_channels=3, num_mapping_layers=4,
                          channel_base=256, channel_max=16, conv_clamp=1, mbstd_num_channels=2,
                          batch=12),
    # The paper's GAN (64x64, 1 channel, 8 mapping layers, channel_base 32768, channel_max 512)
    # with every channel count divided by 32.
    "paper64": dict(img_resolution=64, img_channels=1, num_mapping_layers=8, channel_base=1024,
                    channel_max=16, conv_clamp=256, mbstd_num_channels=1, batch=4,
                    pl_param_grads=True),
}


def randomize_constants(module, generator) -> None:
  """Overwrites every parameter or buffer that starts as a constant with random values.

  All biases get N(0, 0.1) in effective units (FullyConnectedLayer multiplies its bias by
  `bias_gain` = lr_multiplier, 0.01 in the mapping network, so the stored value is scaled up by
  1 / bias_gain), style affine biases (init 1) get 1 + N(0, 0.1), `noise_strength` (init 0) gets
  N(0, 0.1) and `mapping.w_avg` (init 0) gets N(0, 0.5). `resample_filter` buffers are kept.
  Afterwards all tensors are rounded to bfloat16-representable float32 values.
  """
  import torch  # pylint: disable=g-import-not-at-top
  gains = {name: getattr(sub, "bias_gain", 1) for name, sub in module.named_modules()}
  with torch.no_grad():
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
      owner, _, leaf = name.rpartition(".")
      noise = torch.randn(tensor.shape, generator=generator)
      if leaf == "bias":
        value = noise * 0.1 / gains[owner] + (1 if owner.endswith("affine") else 0)
      elif leaf == "noise_strength":
        value = noise * 0.1
      elif leaf == "w_avg":
        value = noise * 0.5
      else:
        continue
      tensor.copy_(value)
    # Round every tensor to a bfloat16-representable float32 (8 significant bits; the low 16
    # bits zero) so that the .npz compresses to about half; the values stay float32 and the
    # forward passes run in float32. resample_filter ([1,3,3,1] taps / 64) is exact already.
    for tensor in list(module.parameters()) + list(module.buffers()):
      tensor.copy_(tensor.to(torch.bfloat16).float())
    # Nothing but the resampling filters may be left constant, or a mis-mapped tensor could hide.
    for name, tensor in module.state_dict().items():
      if not name.endswith("resample_filter") and tensor.numel() > 1:
        assert float(tensor.std()) > 0, f"{name} is still constant"


def build(networks, config, seed):
  """A randomized reference G and resnet D of `config` (float32, eval mode)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  g_net = networks.Generator(
      z_dim=config["z_dim"], c_dim=0, w_dim=config["w_dim"],
      img_resolution=config["img_resolution"], img_channels=config["img_channels"],
      mapping_kwargs=dict(num_layers=config["num_mapping_layers"]),
      synthesis_kwargs=dict(channel_base=config["channel_base"],
                            channel_max=config["channel_max"], num_fp16_res=0,
                            conv_clamp=config["conv_clamp"]))
  # Discriminator takes the minibatch-std settings through epilogue_kwargs.
  d_net = networks.Discriminator(
      c_dim=0, img_resolution=config["img_resolution"], img_channels=config["img_channels"],
      architecture="resnet", channel_base=config["channel_base"],
      channel_max=config["channel_max"], num_fp16_res=0, conv_clamp=config["conv_clamp"],
      epilogue_kwargs=dict(mbstd_group_size=config["mbstd_group_size"],
                           mbstd_num_channels=config.get("mbstd_num_channels", 1)))
  generator = torch.Generator().manual_seed(seed + 1)
  randomize_constants(g_net, generator)
  randomize_constants(d_net, generator)
  return g_net.eval().float(), d_net.eval().float()


def state_arrays(prefix, g_net, d_net):
  arrays = {}
  for name, net in (("G", g_net), ("D", d_net)):
    for key, tensor in net.state_dict().items():
      arrays[f"{prefix}{name}.{key}"] = tensor.detach().float().numpy()
  return arrays


def forward_reference(networks, args):
  """The forward-pass part (float32), as the parity test of the forward passes reads it."""
  import torch  # pylint: disable=g-import-not-at-top
  config = dict(z_dim=32, w_dim=32, img_resolution=args.resolution, img_channels=2,
                num_mapping_layers=8, channel_base=args.channel_base,
                channel_max=args.channel_max, conv_clamp=args.conv_clamp, mbstd_group_size=4)
  g_net, d_net = build(networks, config, args.seed)
  config["num_ws"] = g_net.num_ws
  config["c_dim"] = 0
  inputs = torch.Generator().manual_seed(args.seed + 2)
  z = torch.randn([BATCH, config["z_dim"]], generator=inputs)
  z2 = torch.randn([BATCH, config["z_dim"]], generator=inputs)
  size = config["img_resolution"]
  x_real = torch.randint(-128, 129, [BATCH, config["img_channels"], size, size],
                         generator=inputs).float() / 128
  # Cutoff 3: block 8's conv1 uses ws[2] (from z), its ToRGB ws[3] (from z2) -- the same w as
  # block 16's conv0, which checks how block ws overlap.
  cutoff = 3
  psi = 0.7
  with torch.no_grad():
    ws = g_net.mapping(z, None, truncation_psi=1)
    ws_trunc = g_net.mapping(z, None, truncation_psi=psi)
    img = g_net(z, None, truncation_psi=1, noise_mode="const")
    img_trunc = g_net(z, None, truncation_psi=psi, noise_mode="const")
    img_nonoise = g_net.synthesis(ws, noise_mode="none")
    ws_mix = ws.clone()
    ws_mix[:, cutoff:] = g_net.mapping(z2, None, truncation_psi=1)[:, cutoff:]
    img_mix = g_net.synthesis(ws_mix, noise_mode="const")
    d_fake = d_net(img, None)
    d_real = d_net(x_real, None)
  arrays = state_arrays("", g_net, d_net)
  for name, tensor in dict(z=z, z2=z2, x_real=x_real, ws=ws, ws_trunc=ws_trunc, img=img,
                           img_trunc=img_trunc, img_nonoise=img_nonoise, ws_mix=ws_mix,
                           img_mix=img_mix, d_fake=d_fake, d_real=d_real).items():
    arrays[name] = tensor.numpy().astype(np.float32)
  arrays["cutoff"] = np.array(cutoff, np.int64)
  arrays["truncation_psi"] = np.array(psi, np.float32)
  for name, value in config.items():
    arrays[name] = np.array(value, np.int64)
  return arrays


@contextlib.contextmanager
def float64_reference(networks, bias_act_module):
  """Runs the reference's networks in float64 and records each bias_act's distance to its kinks.

  The networks' blocks cast their features to `torch.float32` (fp16 off); here that name means
  float64 inside `training.networks` only. Every bias_act call records min |pre-activation| /
  rms (leaky ReLU) and min ||output| - clamp| / clamp (a clamp) in the yielded list.
  """
  import torch  # pylint: disable=g-import-not-at-top
  float64_torch = types.ModuleType("torch")
  float64_torch.__dict__.update(torch.__dict__)
  float64_torch.float32 = torch.float64
  margins = []
  original = bias_act_module.bias_act

  def recording_bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None,
                         **kwargs):
    with torch.no_grad():
      pre = x if b is None else x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
      if act == "lrelu":
        rms = pre.square().mean().sqrt().clamp_min(1e-30)
        margins.append(float(pre.abs().min() / rms))
      if clamp is not None and clamp >= 0:
        spec = bias_act_module.activation_funcs[act]
        out = spec.func(pre, alpha=float(alpha if alpha is not None else spec.def_alpha))
        out = out * float(gain if gain is not None else spec.def_gain)
        margins.append(float((out.abs() - clamp).abs().min() / clamp))
    return original(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, **kwargs)

  saved_torch = networks.torch
  networks.torch = float64_torch
  bias_act_module.bias_act = recording_bias_act
  try:
    yield margins
  finally:
    networks.torch = saved_torch
    bias_act_module.bias_act = original


def to_float64(net):
  """A float64 copy of a reference network; the FIR filters stay float32 (the ops require it)."""
  net = copy.deepcopy(net)
  for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
    if not name.endswith("resample_filter"):
      tensor.data = tensor.data.double()
  return net


def gradient_reference(networks, bias_act_module, case, seed, kink_margin, max_draws):
  """The float64 gradients of one case, on the first inputs that keep `kink_margin` (see top)."""
  import torch  # pylint: disable=g-import-not-at-top
  config = dict(GRADIENT_CASES[case], z_dim=32, w_dim=32, mbstd_group_size=4)
  batch = config.pop("batch")
  pl_param_grads = config.pop("pl_param_grads", False)
  g_net, d_net = build(networks, config, seed)
  g64, d64 = to_float64(g_net), to_float64(d_net)
  size, channels = config["img_resolution"], config["img_channels"]
  for draw in range(max_draws):
    inputs = torch.Generator().manual_seed(seed + 100 + draw)
    x_real = torch.randint(-128, 129, [batch, channels, size, size],
                           generator=inputs).double() / 128
    z = torch.randn([batch, config["z_dim"]], generator=inputs, dtype=torch.float64)
    pl_noise = torch.randn([batch, channels, size, size], generator=inputs,
                           dtype=torch.float64) / math.sqrt(size * size)
    # At bfloat16-representable values (they compress), which float32 holds exactly.
    pl_noise = pl_noise.to(torch.bfloat16).double()
    with float64_reference(networks, bias_act_module) as margins:
      with torch.no_grad():
        ws = g64.mapping(z, None, truncation_psi=1)
      ws = ws.detach().float().double().requires_grad_(True)
      margins.clear()  # The mapping is not differentiated here.
      img = g64.synthesis(ws, noise_mode="const")
      (pl_grad,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=pl_param_grads)
      if pl_param_grads:
        pl_lengths = pl_grad.square().sum(2).mean(1).sqrt()
        g_names, g_params = zip(*g64.synthesis.named_parameters())
        pl_param = torch.autograd.grad(pl_lengths.sum(), g_params, allow_unused=True)
        pl_grad = pl_grad.detach()
        img = g64.synthesis(ws, noise_mode="const")
        img_param = torch.autograd.grad((img * pl_noise).sum(), g_params, allow_unused=True)
      x = x_real.clone().requires_grad_(True)
      logits = d64(x, None)
      (d_input_grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
      penalty = d_input_grad.square().sum()
      names, params = zip(*d64.named_parameters())
      r1 = torch.autograd.grad(penalty, params, allow_unused=True)
    found = min(margins)
    print(f"{case}: draw {draw}: smallest kink margin {found:.2e} "
          f"({len(margins)} bias_act calls)")
    if found >= kink_margin:
      break
  else:
    raise SystemExit(f"{case}: no inputs with a kink margin of {kink_margin} in {max_draws} "
                     "draws; lower --kink_margin or shrink the case")
  prefix = f"grad/{case}/"
  arrays = state_arrays(prefix, g_net, d_net)
  arrays[prefix + "x_real"] = x_real.float().numpy()
  arrays[prefix + "ws"] = ws.detach().float().numpy()
  arrays[prefix + "pl_noise"] = pl_noise.float().numpy()
  # float32 keeps 7 digits of the float64 values, ample for a comparison at 1e-5.
  arrays[prefix + "d_input_grad"] = d_input_grad.detach().float().numpy()
  arrays[prefix + "pl_grad"] = pl_grad.float().numpy()
  for name, param, grad in zip(names, params, r1):
    grad = torch.zeros_like(param) if grad is None else grad
    arrays[f"{prefix}r1.{name}"] = grad.float().numpy()
  if pl_param_grads:
    for kind, grads in (("pl_param", pl_param), ("img_param", img_param)):
      for name, param, grad in zip(g_names, g_params, grads):
        grad = torch.zeros_like(param) if grad is None else grad
        arrays[f"{prefix}{kind}.synthesis.{name}"] = grad.float().numpy()
  arrays[prefix + "min_kink_margin"] = np.array(found)
  for name, value in dict(config, num_ws=g_net.num_ws, batch=batch).items():
    arrays[prefix + name] = np.array(value, np.int64)
  return arrays


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", required=True,
                      help="checkout of NVlabs/stylegan2-ada-pytorch (only imported, not changed)")
  parser.add_argument("--out", default="tests/data/stylegan2_reference.npz")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--resolution", type=int, default=16)
  parser.add_argument("--channel_base", type=int, default=128)
  parser.add_argument("--channel_max", type=int, default=16)
  parser.add_argument("--conv_clamp", type=int, default=256)
  parser.add_argument("--kink_margin", type=float, default=2e-6,
                      help="smallest distance of a pre-activation to a kink, relative to the "
                           "layer's rms, for the gradient cases' inputs")
  parser.add_argument("--max_draws", type=int, default=200)
  args = parser.parse_args()

  # The reference needs no patching on torch 2.13 for this use: on CPU its custom ops
  # (bias_act, upfirdn2d) test `x.device.type == 'cuda'` before trying to build the CUDA plugin,
  # so they always take their pure-PyTorch `_ref` paths, and conv2d_gradfix likewise falls back
  # to torch.nn.functional.conv2d / conv_transpose2d for non-CUDA tensors.
  sys.path.insert(0, str(pathlib.Path(args.reference).resolve()))
  import torch  # pylint: disable=g-import-not-at-top
  from torch_utils.ops import bias_act  # pylint: disable=g-import-not-at-top
  from training import networks  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)  # Same summation order on every run.
  np.random.seed(args.seed)
  arrays = forward_reference(networks, args)
  for case in GRADIENT_CASES:
    arrays.update(gradient_reference(networks, bias_act, case, args.seed, args.kink_margin,
                                     args.max_draws))

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, **arrays)
  for name, value in arrays.items():
    if not name.startswith(("G.", "D.")) and ".G." not in name and "/G." not in name:
      if "/D." not in name and "/r1." not in name:
        print(f"{name:45s} {str(value.dtype):8s} {list(value.shape)}")
  print(f"wrote {len(arrays)} arrays to {out} ({out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
  main()
