r"""Writes a small, fake image set with known copies, to try the audit on without patient data.

  python tools/make_example_data.py --out=runs/example_data
  python launch.py --config=configs/audit.py \
      --config.audit.synthetic_images=runs/example_data/synthetic \
      --config.audit.training_images=runs/example_data/train \
      --config.audit.holdout_images=runs/example_data/holdout \
      --workdir=runs/example_audit

Every image is a smooth random "phantom" (a few bright and dark Gaussian blobs, 8-bit PNG). The
synthetic folder holds novel phantoms and planted copies of training images, named after what
they are: `copy_exact_*`, `copy_contrast_*` (intensity rescaled), `copy_noisy_*` (Gaussian
noise) and `copy_shifted_*` (moved by 3 pixels, which pixel correlation is known to miss).
"""

import argparse
import pathlib

import numpy as np
from PIL import Image


def phantom(rng: np.random.Generator, size: int) -> np.ndarray:
  y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
  image = np.zeros((size, size))
  for _ in range(rng.integers(4, 9)):
    cx, cy = rng.uniform(-0.7, 0.7, 2)
    width = rng.uniform(0.05, 0.25)
    image += rng.uniform(-0.5, 1.0) * np.exp(-((x - cx)**2 + (y - cy)**2) / (2 * width**2))
  image -= image.min()
  return image / image.max() * 255


def save(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="runs/example_data")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--num_train", type=int, default=400)
  parser.add_argument("--num_holdout", type=int, default=400)
  parser.add_argument("--num_novel", type=int, default=90)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  out = pathlib.Path(args.out)
  train = [phantom(rng, args.size) for _ in range(args.num_train)]
  for i, image in enumerate(train):
    save(out / "train" / f"train_{i:04d}.png", image)
  for i in range(args.num_holdout):
    save(out / "holdout" / f"holdout_{i:04d}.png", phantom(rng, args.size))
  for i in range(args.num_novel):
    save(out / "synthetic" / f"novel_{i:04d}.png", phantom(rng, args.size))
  picks = rng.choice(args.num_train, 8, replace=False)
  for n, j in enumerate(picks[:2]):
    save(out / "synthetic" / f"copy_exact_{n}_of_train_{j:04d}.png", train[j])
  for n, j in enumerate(picks[2:4]):
    save(out / "synthetic" / f"copy_contrast_{n}_of_train_{j:04d}.png", 0.6 * train[j] + 50)
  for n, j in enumerate(picks[4:6]):
    noisy = train[j] + rng.normal(0, 12, train[j].shape)
    save(out / "synthetic" / f"copy_noisy_{n}_of_train_{j:04d}.png", noisy)
  for n, j in enumerate(picks[6:]):
    save(out / "synthetic" / f"copy_shifted_{n}_of_train_{j:04d}.png", np.roll(train[j], 3, 1))
  print(f"wrote {args.num_train} training, {args.num_holdout} holdout and "
        f"{args.num_novel + 8} synthetic images (8 planted copies) under {out}")


if __name__ == "__main__":
  main()
