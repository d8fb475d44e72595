r"""Samples a StyleGAN2 trained with NVlabs' code, with memjax's generator, for the audit.

  python tools/sample_nvlabs_pickle.py --network=network-snapshot-025000.pkl --seeds=2-100002 \
      --out=runs/nvlabs/samples
  python launch.py --config=configs/audit.py --config.audit.synthetic_images=runs/nvlabs/samples \
      --config.audit.training_images=TRAINING_IMAGES --config.audit.holdout_images=HELD_OUT \
      --workdir=runs/nvlabs/audit

The pickle (`network-snapshot-*.pkl` of stylegan2-ada-pytorch, or of stylegan3 with
--cfg=stylegan2) is read by `memjax.models.nvlabs_pickle`, which needs neither NVlabs' code nor
torch. Each seed's image is the one NVlabs' gen_images.py / generate.py renders for it (z from
`np.random.RandomState(seed)`, --trunc and --noise-mode as given, pixels x * 127.5 + 128 in
uint8), written channels last in .npz files of `--chunk` images (`images`, `seeds`), each under
a temporary name first. A StyleGAN3 network (--cfg=stylegan3-t or -r) is refused: sample it with
NVlabs' gen_images.py and audit its PNG folder instead.
"""

import argparse
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from memjax.models import nvlabs_pickle  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_seeds(text: str) -> list[int]:
  """'2-5,9' -> [2, 3, 4, 5, 9], as NVlabs' parse_range (ranges inclusive)."""
  seeds = []
  for part in text.split(","):
    low, _, high = part.strip().partition("-")
    try:
      seeds.extend(range(int(low), int(high or low) + 1))
    except ValueError:
      raise SystemExit(f"--seeds: {part!r} is not a number or a range a-b") from None
  return seeds


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--network", required=True, help="NVlabs network pickle")
  parser.add_argument("--seeds", required=True, help="e.g. 2-100002 or 0,1,4-6")
  parser.add_argument("--out", required=True, help="folder for the .npz files")
  parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (NVlabs: 1)")
  parser.add_argument("--noise_mode", default="const", choices=("const", "random", "none"))
  parser.add_argument("--network_name", default="G_ema", choices=("G_ema", "G"))
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--chunk", type=int, default=1000, help="images per .npz file")
  args = parser.parse_args(argv)

  seeds = parse_seeds(args.seeds)
  try:
    snapshot = nvlabs_pickle.load_nvlabs_pickle(args.network, networks=[args.network_name])
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(str(error)) from None
  generator = getattr(snapshot, args.network_name)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for start in range(0, len(seeds), args.chunk):
    chunk = seeds[start:start + args.chunk]
    images = nvlabs_pickle.generate_images(generator, chunk, truncation_psi=args.trunc,
                                           noise_mode=args.noise_mode,
                                           batch_size=args.batch_size)
    path = out / f"seeds_{chunk[0]:06d}-{chunk[-1]:06d}.npz"
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
      np.savez(f, images=images, seeds=np.asarray(chunk, np.int64))
    os.replace(temporary, path)
    print(f"{path}: {len(chunk)} images of shape {images.shape[1:]}")


if __name__ == "__main__":
  main()
