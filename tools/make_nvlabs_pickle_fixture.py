r"""Writes the small NVlabs network pickle that tests/test_nvlabs_pickle.py loads without torch.

  python tools/make_nvlabs_pickle_fixture.py --reference=/path/to/stylegan2-ada-pytorch \
      --out=tests/fixtures/nvlabs_stylegan2_tiny.pkl

Torch and an unmodified checkout of https://github.com/NVlabs/stylegan2-ada-pytorch are needed
only here (nothing of it is copied): the script builds a tiny `training.networks.Generator` (8x8,
one channel, 4-dimensional z and w, 1 mapping layer, at most 4 channels), randomizes every
constant as tools/make_stylegan2_reference.py does, and pickles {'G_ema': G, 'training_set_kwargs':
{...}} with `pickle.dump`, as the reference's training loop writes `network-snapshot-*.pkl`, so
that every module goes through `torch_utils.persistence` and every tensor through torch's own
pickling. Two changes keep the file at a few KB: the pickle holds G_ema alone (a snapshot also has
G, D and augment_pipe; the torch test writes those), and the source code that persistence embeds
(training/networks.py, 37 KB) is replaced by a one-line note; memjax's loader never reads it.

Beside it, the same name with `.npz` holds what the reference computes from that pickle's generator:
`z` [4, 4] and `img` = `G_ema(z, None, noise_mode='const')` (NCHW, float32), and `seeds` with
`seed_images`, the uint8 images (NHWC) that NVlabs' generate.py writes for those seeds (z from
`np.random.RandomState(seed).randn(1, z_dim)`, truncation 1, constant noise).
"""

import argparse
import pathlib
import pickle
import sys

import numpy as np

SOURCE_NOTE = ("# training/networks.py of NVlabs/stylegan2-ada-pytorch; the source is left out of "
               "this test fixture\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", required=True,
                      help="checkout of NVlabs/stylegan2-ada-pytorch (only imported, not changed)")
  parser.add_argument("--out", default="tests/fixtures/nvlabs_stylegan2_tiny.pkl")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  sys.path.insert(0, str(pathlib.Path(args.reference).resolve()))
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import torch  # pylint: disable=g-import-not-at-top
  import dnnlib  # pylint: disable=g-import-not-at-top
  from torch_utils import persistence  # pylint: disable=g-import-not-at-top
  from training import networks  # pylint: disable=g-import-not-at-top
  from make_stylegan2_reference import randomize_constants  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)
  torch.manual_seed(args.seed)
  g_net = networks.Generator(
      z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=1,
      mapping_kwargs=dnnlib.EasyDict(num_layers=1),
      synthesis_kwargs=dnnlib.EasyDict(channel_base=16, channel_max=4, num_fp16_res=0,
                                       conv_clamp=256))
  randomize_constants(g_net, torch.Generator().manual_seed(args.seed + 1))
  g_net.eval().requires_grad_(False)
  for decorator in persistence._decorators:  # pylint: disable=protected-access
    decorator._orig_module_src = SOURCE_NOTE  # pylint: disable=protected-access
  snapshot = dict(G_ema=g_net, training_set_kwargs=dict(
      class_name="training.dataset.ImageFolderDataset", path="tiny.zip", use_labels=False,
      max_size=16, xflip=True, resolution=8, random_seed=0))

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out, "wb") as f:
    pickle.dump(snapshot, f)

  z = torch.randn([4, 4], generator=torch.Generator().manual_seed(args.seed + 2))
  seeds = np.arange(2, 6)
  with torch.no_grad():
    img = g_net(z, None, truncation_psi=1, noise_mode="const")
    seed_images = []
    for seed in seeds:  # As generate.py / gen_images.py.
      seed_z = torch.from_numpy(np.random.RandomState(seed).randn(1, g_net.z_dim))
      image = g_net(seed_z, torch.zeros([1, 0]), truncation_psi=1, noise_mode="const")
      seed_images.append((image.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255)
                         .to(torch.uint8).numpy())
  np.savez_compressed(out.with_suffix(".npz"), z=z.numpy(), img=img.numpy().astype(np.float32),
                      seeds=seeds, seed_images=np.concatenate(seed_images))
  for path in (out, out.with_suffix(".npz")):
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
  main()
