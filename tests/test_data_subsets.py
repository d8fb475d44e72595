"""The training-set-size knob (config.data.num_images, data.subset_seed) and block-mean sources.

A subset must be the same images every run and on every process (a fresh interpreter here),
chosen by its seed alone, nested across sizes, and what training reads; the block means must
equal a float64 reference, so that the demo's audit compares samples with the images and the
pixel grid the models trained on.
"""

import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from memjax.data import sources
from memjax.train import inputs


def reference_indices(length, num_images, seed):
  """The documented rule, from numpy's PCG64 stream: the num_images smallest 64-bit keys."""
  keys = [int(k) for k in np.random.PCG64(seed).random_raw(length)]
  return sorted(sorted(range(length), key=lambda i: (keys[i], i))[:num_images])


def test_subset_is_seeded_sorted_nested_and_follows_the_documented_rule():
  for seed in (0, 1, 12345):
    chosen = {}
    for n in (1, 8, 16, 47):
      indices = sources.subset_indices(48, n, seed)
      assert indices.tolist() == reference_indices(48, n, seed)
      assert list(indices) == sorted(set(indices.tolist())) and len(indices) == n
      assert 0 <= indices.min() and indices.max() < 48
      # The same call gives the same subset; a smaller one lies inside a larger one.
      assert np.array_equal(indices, sources.subset_indices(48, n, seed))
      chosen[n] = set(indices.tolist())
    assert chosen[1] <= chosen[8] <= chosen[16] <= chosen[47]
  # Another seed, another subset; 0, None or every image: the whole source in order.
  assert not np.array_equal(sources.subset_indices(48, 16, 0), sources.subset_indices(48, 16, 1))
  for everything in (0, None, 48):
    assert sources.subset_indices(48, everything, 3).tolist() == list(range(48))


def test_subset_is_the_same_in_a_fresh_process():
  code = ("from memjax.data.sources import subsets\n"
          "print(subsets.subset_indices(1000, 37, 7).tolist())\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
  assert result.stdout.strip() == str(sources.subset_indices(1000, 37, 7).tolist())


def test_opened_subset_reads_the_chosen_images(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (20, 6, 5, 2), dtype=np.uint8)
  np.save(tmp_path / "train.npy", images)
  subset = sources.open(tmp_path / "train.npy", num_images=7, seed=3)
  indices = sources.subset_indices(20, 7, 3)
  assert isinstance(subset, sources.SubsetSource) and len(subset) == 7
  np.testing.assert_array_equal(subset.read(0, 7, dtype=None), images[indices])
  assert subset.ids() == [str(i) for i in indices]
  assert "7 of 20 images, subset seed 3" in subset.description
  assert sources.open(tmp_path / "train.npy", num_images=0).description.endswith("train.npy")
  with pytest.raises(ValueError, match=r"train\.npy.*num_images=21.*20"):
    sources.open(tmp_path / "train.npy", num_images=21)


def test_block_means_equal_a_float64_reference():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 65536, (3, 9, 8, 2), dtype=np.uint16)  # 9 rows: one is dropped.
  means = sources.BlockMeanSource(sources.ArraySource(images), 2)
  expected = images[:, :8, :8].astype(np.float64).reshape(3, 4, 2, 4, 2, 2).mean(axis=(2, 4))
  assert means.shape == (4, 4, 2) and means.dtype == np.float32
  np.testing.assert_allclose(means.read(0, 3, dtype=np.float64), expected, rtol=1e-7)
  # A sample that training's `upsample_to` wrote (pixels repeated 2x2) reads back exactly.
  small = rng.integers(0, 256, (2, 4, 4), dtype=np.uint8)
  upsampled = small.repeat(2, axis=1).repeat(2, axis=2)
  np.testing.assert_array_equal(
      sources.BlockMeanSource(sources.ArraySource(upsampled), 2).read(0, 2), small)
  # Volumes: three spatial axes, no channel axis.
  volumes = rng.random((2, 4, 4, 6)).astype(np.float32)
  np.testing.assert_allclose(
      sources.BlockMeanSource(sources.ArraySource(volumes), 2, spatial_dims=3).read(0, 2),
      volumes.astype(np.float64).reshape(2, 2, 2, 2, 2, 3, 2).mean(axis=(2, 4, 6)), rtol=1e-6)
  with pytest.raises(ValueError, match="larger than its images"):
    sources.BlockMeanSource(sources.ArraySource(images), 10)


def test_training_reads_the_subset(tmp_path):
  """config.data.num_images reaches the loop's data: exactly the subset the audit opens."""
  images = np.random.default_rng(2).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
  np.save(tmp_path / "train.npy", images)
  options = ml_collections.ConfigDict({"source": str(tmp_path / "train.npy"), "num_images": 5,
                                       "subset_seed": 9, "volumes": False})
  data = inputs.open_training_data(options)
  trained = np.stack([data.source[i]["image"] for i in range(len(data.source))])
  np.testing.assert_array_equal(trained, images[sources.subset_indices(12, 5, 9)])
  np.testing.assert_array_equal(
      trained, sources.open(tmp_path / "train.npy", num_images=5, seed=9).read(0, 5, dtype=None))
