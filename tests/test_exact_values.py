"""Every correlation an audit reports is the float64 value (issue 21), on 1 and 4 devices.

Two data sets of the kind users audit, written as image files and read back as an audit reads
them: the README's phantoms (8-bit PNGs, planted exact, contrast-changed, noisy and shifted
copies) and 16-bit PNG axial slices of the MNI152 template that nilearn ships (training and
held-out slices interleaved, 1 mm apart: neighbours correlate near 1, where a float32 value
would be read against the threshold). Every reported top-k value, every held-out value that sets
the threshold, and their indices are checked against a float64 brute force.
"""

import pathlib

import numpy as np
from PIL import Image
import pytest

from memjax import parallel
from memjax.memorization import audit
from memjax.memorization import result as result_lib
from test_correlation import pearson_float64
from tools import make_example_data

K = 5


def write_pngs(folder: pathlib.Path, images: np.ndarray) -> pathlib.Path:
  folder.mkdir(parents=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"{i:04d}.png")
  return folder


def phantoms():
  rng = np.random.default_rng(7)
  train = np.stack([make_example_data.phantom(rng, 64) for _ in range(60)])
  holdout = np.stack([make_example_data.phantom(rng, 64) for _ in range(60)])
  novel = np.stack([make_example_data.phantom(rng, 64) for _ in range(14)])
  copies = [train[3], train[10] ** 1.1 / 255 ** 0.1, train[20] + rng.normal(0, 6, (64, 64)),
            np.roll(train[30], 3, axis=1)]
  synthetic = np.concatenate([np.stack(copies), novel])
  as_uint8 = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8)
  return as_uint8(synthetic), as_uint8(train), as_uint8(holdout)


def mni152_slices():
  from nilearn import datasets  # pylint: disable=g-import-not-at-top
  volume = datasets.load_mni152_template(resolution=2).get_fdata()
  volume = np.round(volume / volume.max() * 65535).astype(np.uint16)
  axial = np.moveaxis(volume[:, :, 20:76], 2, 0)  # slices with brain in them
  train, holdout = axial[0::2], axial[1::2]
  rng = np.random.default_rng(8)
  gamma = (65535 * (train[5] / 65535.0) ** 0.7).astype(np.uint16)
  noisy = np.clip(train[12] + rng.normal(0, 900, train[12].shape), 0, 65535).astype(np.uint16)
  synthetic = np.stack([train[2], gamma, noisy, np.roll(train[20], 4, axis=0), train[8][::-1]])
  return synthetic, train, holdout


def float64_top_k(queries: np.ndarray, references: np.ndarray, k: int):
  """Values and indices of each query's k best Pearson correlations, ties to the lower index."""
  correlations = pearson_float64(queries, references)
  order = np.lexsort((np.broadcast_to(np.arange(len(references)), correlations.shape),
                      -correlations), axis=1)[:, :k]
  return np.take_along_axis(correlations, order, axis=1), order


@pytest.fixture(scope="module", params=["phantoms", "mni152"])
def data_set(request, tmp_path_factory):
  synthetic, train, holdout = phantoms() if request.param == "phantoms" else mni152_slices()
  root = tmp_path_factory.mktemp(request.param)
  folders = [write_pngs(root / name, images) for name, images in
             (("synthetic", synthetic), ("train", train), ("holdout", holdout))]
  return (synthetic, train, holdout), folders


@pytest.mark.parametrize("num_devices", [1, 4])
def test_every_reported_value_is_float64(data_set, num_devices, tmp_path):
  (synthetic, train, holdout), (synthetic_dir, train_dir, holdout_dir) = data_set
  out = tmp_path / "audit"
  audit.run_audit(out, synthetic=synthetic_dir, train=train_dir, holdout=holdout_dir, k=K,
                  mesh=parallel.data_mesh(num_devices))
  (found,) = result_lib.read_results(out)
  assert found.values.dtype == np.float64
  values, indices = float64_top_k(synthetic, train, K)
  np.testing.assert_array_equal(found.indices, indices)
  assert np.max(np.abs(found.values - values)) <= 1e-9
  holdout_values, _ = float64_top_k(train, holdout, 1)
  assert np.max(np.abs(found.holdout_max_correlation - holdout_values[:, 0])) <= 1e-9
  # The float32 products alone miss by far more than that here (what the README once showed).
  from memjax.memorization import search  # pylint: disable=g-import-not-at-top
  kernel = search.search(synthetic, train, K, refine=False, mesh=parallel.data_mesh(num_devices))
  assert np.max(np.abs(kernel.values - values)) > 1e-7
  # Exact copies score exactly 1.
  assert found.values[0, 0] == 1.0 and found.indices[0, 0] == indices[0, 0]
