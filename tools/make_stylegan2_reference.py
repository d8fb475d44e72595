r"""Writes the StyleGAN2 parity-test reference arrays from NVlabs' stylegan2-ada-pytorch.

  python tools/make_stylegan2_reference.py --reference=/path/to/stylegan2-ada-pytorch \
      --out=tests/data/stylegan2_reference.npz

Torch is needed only for this script (the test that reads its output uses numpy and JAX). The
script imports `training.networks` from an unmodified checkout of
https://github.com/NVlabs/stylegan2-ada-pytorch (nothing of it is copied here), builds a tiny
Generator and a tiny resnet Discriminator on CPU in float32, randomizes every parameter and buffer
that would otherwise start as a constant, and runs them in eval mode under `torch.no_grad()`.

The one `.npz` holds:
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

To keep the file small (about 170 KB at the default 16x16), all weights and buffers are rounded
to values that bfloat16 can represent (still stored and run as float32) and `x_real` is uniform
in [-1, 1] on a grid of 1/128 steps; both compress well.
"""

import argparse
import pathlib
import sys

import numpy as np

BATCH = 8  # Two minibatch-std groups of 4.


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
  args = parser.parse_args()

  # The reference needs no patching on torch 2.13 for this use: on CPU its custom ops
  # (bias_act, upfirdn2d) test `x.device.type == 'cuda'` before trying to build the CUDA plugin,
  # so they always take their pure-PyTorch `_ref` paths, and conv2d_gradfix likewise falls back
  # to torch.nn.functional.conv2d / conv_transpose2d for non-CUDA tensors.
  sys.path.insert(0, str(pathlib.Path(args.reference).resolve()))
  import torch  # pylint: disable=g-import-not-at-top
  from training import networks  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)  # Same summation order on every run.
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)
  config = dict(z_dim=32, w_dim=32, img_resolution=args.resolution, img_channels=2,
                num_mapping_layers=8,
                channel_base=args.channel_base, channel_max=args.channel_max,
                conv_clamp=args.conv_clamp, mbstd_group_size=4)
  g_net = networks.Generator(
      z_dim=config["z_dim"], c_dim=0, w_dim=config["w_dim"],
      img_resolution=config["img_resolution"], img_channels=config["img_channels"],
      mapping_kwargs=dict(num_layers=config["num_mapping_layers"]),
      synthesis_kwargs=dict(channel_base=config["channel_base"],
                            channel_max=config["channel_max"], num_fp16_res=0,
                            conv_clamp=config["conv_clamp"]))
  # Discriminator takes the minibatch-std group size through epilogue_kwargs.
  d_net = networks.Discriminator(
      c_dim=0, img_resolution=config["img_resolution"], img_channels=config["img_channels"],
      architecture="resnet", channel_base=config["channel_base"],
      channel_max=config["channel_max"], num_fp16_res=0, conv_clamp=config["conv_clamp"],
      epilogue_kwargs=dict(mbstd_group_size=config["mbstd_group_size"]))
  config["num_ws"] = g_net.num_ws
  config["c_dim"] = 0
  generator = torch.Generator().manual_seed(args.seed + 1)
  randomize_constants(g_net, generator)
  randomize_constants(d_net, generator)
  g_net.eval().float()
  d_net.eval().float()

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

  arrays = {}
  for prefix, net in (("G", g_net), ("D", d_net)):
    for name, tensor in net.state_dict().items():
      arrays[f"{prefix}.{name}"] = tensor.detach().float().numpy()
  for name, tensor in dict(z=z, z2=z2, x_real=x_real, ws=ws, ws_trunc=ws_trunc, img=img,
                           img_trunc=img_trunc, img_nonoise=img_nonoise, ws_mix=ws_mix,
                           img_mix=img_mix, d_fake=d_fake, d_real=d_real).items():
    arrays[name] = tensor.numpy().astype(np.float32)
  arrays["cutoff"] = np.array(cutoff, np.int64)
  arrays["truncation_psi"] = np.array(psi, np.float32)
  for name, value in config.items():
    arrays[name] = np.array(value, np.int64)

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, **arrays)
  for name, value in arrays.items():
    print(f"{name:45s} {str(value.dtype):8s} {list(value.shape)}")
  print(f"wrote {len(arrays)} arrays to {out} ({out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
  main()
