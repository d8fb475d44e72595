"""The established copy measures against float64 references written from their definitions:
exact streamed nearest neighbours, Carlini et al.'s calibrated distance, dgm-eval's AuthPct,
and Meehan et al.'s C_T (with scipy's Mann-Whitney U, numpy's SVD and planted cells)."""

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from memjax.memorization import detectors
from memjax.memorization import search


def cdist(a, b):
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  return scipy.spatial.distance.cdist(a, b)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (70, 6, 6, 2), dtype=np.uint8)
  synthetic = rng.integers(0, 256, (23, 6, 6, 2), dtype=np.uint8)
  synthetic[:4] = train[[3, 8, 8, 60]]  # exact copies
  train[41] = train[40]  # a duplicated training image
  return train, synthetic


def test_l2_search_is_exact_when_streamed_and_sharded(images):
  train, synthetic = images
  reference = cdist(synthetic, train)
  for block_size in (None, 9):
    found = search.search(synthetic, train, 5, metric="l2", block_size=block_size)
    order = np.argsort(reference, axis=1, kind="stable")[:, :5]  # ties to the lower index
    np.testing.assert_array_equal(found.indices, order)
    np.testing.assert_allclose(found.values, np.take_along_axis(reference, order, axis=1),
                               rtol=1e-12)
  assert np.all(found.values[:4, 0] == 0.0)  # exact copies at exactly 0, not rounding
  # A set against itself, each image left out: its duplicate is at 0, others at their nearest.
  own = search.search(train, train, 1, metric="l2", exclude=np.arange(70), block_size=16)
  self_distance = cdist(train, train)
  np.fill_diagonal(self_distance, np.inf)
  np.testing.assert_array_equal(own.indices[:, 0], np.argmin(self_distance, axis=1))
  assert own.values[40, 0] == own.values[41, 0] == 0.0
  assert own.indices[40, 0] == 41 and own.indices[41, 0] == 40
  with pytest.raises(ValueError, match=r"k must lie in \[1, 69\]"):
    search.search(train, train, 70, metric="l2", exclude=np.arange(70))


def test_correlation_search_excludes_each_query_own_image(images):
  train, _ = images
  rows = train.reshape(len(train), -1).astype(np.float64)
  rows = rows - rows.mean(axis=1, keepdims=True)
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  expected = rows @ rows.T
  np.fill_diagonal(expected, -np.inf)
  found = search.search(train, train, 3, exclude=np.arange(len(train)), block_size=16)
  order = np.argsort(-expected, axis=1, kind="stable")[:, :3]
  np.testing.assert_array_equal(found.indices, order)
  np.testing.assert_allclose(found.values, np.take_along_axis(expected, order, axis=1),
                             atol=1e-5)
  assert found.values[40, 0] == 1.0 and found.indices[40, 0] == 41  # its duplicate, not itself


def test_carlini_calibrated_distance_matches_its_definition(images):
  train, synthetic = images
  distance = np.sort(cdist(synthetic, train), axis=1)
  want = distance[:, 0] / (0.5 * distance[:, :50].mean(axis=1))
  got = detectors.calibrated_l2(synthetic, train, block_size=11)
  np.testing.assert_allclose(got.scores, want, rtol=1e-10)
  assert got.num_neighbors == 50 and np.all(got.scores[:4] == 0.0)
  # Fewer training images than neighbours: all of them.
  small = detectors.calibrated_l2(synthetic, train[:7], alpha=0.25)
  distance = cdist(synthetic, train[:7])
  np.testing.assert_allclose(small.scores, distance.min(1) / (0.25 * distance.mean(1)),
                             rtol=1e-10)


def test_authenticity_matches_dgm_evals_authpct(images):
  train, synthetic = images
  synthetic = synthetic.copy()
  synthetic[4] = train[41]  # a copy of a duplicated training image: 0 < 0 is false, unauthentic
  # dgm-eval's AuthPct, written out: distances to the nearest real sample, and that sample's
  # distance to its nearest other real sample (the diagonal filled with infinity).
  real = cdist(train, train)
  np.fill_diagonal(real, np.inf)
  generated = cdist(synthetic, train)
  nearest = generated.argmin(axis=1)
  authentic = real.min(axis=0)[nearest] < generated.min(axis=1)
  got = detectors.authenticity(synthetic, train, block_size=13)
  np.testing.assert_array_equal(got.authentic, authentic)
  assert got.percent == pytest.approx(100.0 * authentic.mean())
  assert not got.authentic[:5].any()
  np.testing.assert_array_equal(got.nearest_index, nearest)
  scores = got.scores
  np.testing.assert_array_equal(scores >= 0.5, ~authentic)
  assert scores[4] == 1.0


def test_mann_whitney_u_and_z_match_scipy():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 6, 17).astype(float)  # many ties
  y = rng.integers(0, 6, 11).astype(float)
  u = scipy.stats.mannwhitneyu(x, y, alternative="less").statistic
  assert detectors.mann_whitney_u(x, y) == u
  m, n = 17, 11
  assert detectors.meehan_z(x, y) == pytest.approx((u - (m * n / 2 - 0.5))
                                                    / np.sqrt(m * n * (m + n + 1) / 12))


@pytest.mark.parametrize("method", ["covariance", "gram"])
def test_pca_matches_numpys_svd(method):
  rng = np.random.default_rng(2)
  train = rng.standard_normal((40, 12)) @ rng.standard_normal((12, 12)) + 3.0
  other = rng.standard_normal((9, 12))
  pca = detectors.pca_fit(train, 5, method=method, block_size=7)
  centred = train - train.mean(axis=0)
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)
  want = (other - train.mean(axis=0)) @ vt[:5].T
  got = pca.project(other, block_size=4)
  signs = np.sign(np.sum(got * want, axis=0))  # each component up to its sign
  np.testing.assert_allclose(got * signs, want, atol=1e-9)
  np.testing.assert_allclose(pca.explained_variance, singular[:5]**2 / 39, rtol=1e-9)
  assert detectors.pca_fit(train[:4], 64).components.shape == (12, 3)  # at most N - 1


def blobs(rng, counts, centres, scale=0.3):
  points = np.concatenate([c + scale * rng.standard_normal((n, len(c)))
                           for n, c in zip(counts, centres)])
  labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts)])
  return points, labels


def test_kmeans_recovers_separated_cells():
  rng = np.random.default_rng(3)
  centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  points, labels = blobs(rng, [30, 20, 25], centres)
  _, found = detectors.kmeans(points, 3, seed=0)
  for cell in range(3):
    assert len(set(found[labels == cell].tolist())) == 1
  assert len(set(found.tolist())) == 3
  again = detectors.kmeans(points, 3, seed=0)[1]
  np.testing.assert_array_equal(found, again)


def test_data_copying_test_matches_meehans_definition():
  """C_T on three planted cells in 80 dimensions (PCA to 64): generated samples that copy the
  training set in one cell and are novel in the others, against a reference from numpy's SVD,
  the planted cells, scipy's U, and the held-out-weighted mean."""
  rng = np.random.default_rng(4)
  centres = np.zeros((3, 80))
  centres[1, 0] = centres[2, 1] = 20.0
  train, train_cells = blobs(rng, [60, 60, 60], centres, 1.0)
  holdout, holdout_cells = blobs(rng, [30, 20, 10], centres, 1.0)
  generated, generated_cells = blobs(rng, [40, 25, 10], centres, 1.0)
  generated[:40] = train[:40] + 0.01 * rng.standard_normal((40, 80))  # copies in cell 0
  got = detectors.data_copying_test(train, holdout, generated, num_cells=3, seed=0)

  mean = train.mean(axis=0)
  vt = np.linalg.svd(train - mean, full_matrices=False)[2][:64]
  project = lambda x: (x - mean) @ vt.T  # pylint: disable=unnecessary-lambda-assignment
  t, h, g = project(train), project(holdout), project(generated)
  z, weights = [], []
  for cell in range(3):
    if np.sum(generated_cells == cell) <= 20:
      continue  # dgm-eval's tau = 20 / m: a cell needs more than 20 generated samples
    cell_train = t[train_cells == cell]
    lq = cdist(g[generated_cells == cell], cell_train).min(axis=1)
    lp = cdist(h[holdout_cells == cell], cell_train).min(axis=1)
    m, n = lq.size, lp.size
    u = scipy.stats.mannwhitneyu(lq, lp, alternative="less").statistic
    z.append((u - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12))
    weights.append(n / len(holdout))
  want = np.dot(weights, z) / np.sum(weights)
  assert got.statistic == pytest.approx(want, rel=1e-9)
  assert got.num_components == 64 and got.cell_used.sum() == 2
  assert sorted(got.cell_generated_count.tolist()) == [10, 25, 40]
  assert np.nanmin(got.cell_z) < -5  # the copied cell
  assert got.statistic < -3


def test_data_copying_test_names_cells_that_lack_samples():
  rng = np.random.default_rng(5)
  centres = np.array([[0.0, 0.0], [30.0, 0.0]])
  train, _ = blobs(rng, [30, 30], centres)
  holdout, _ = blobs(rng, [30, 0], centres)
  generated, _ = blobs(rng, [25, 25], centres)
  with pytest.raises(ValueError, match="holds 0 held-out .*use fewer cells"):
    detectors.data_copying_test(train, holdout, generated, num_cells=2)
  holdout, _ = blobs(rng, [20, 20], centres)
  with pytest.raises(ValueError, match="more than 20 generated samples"):
    detectors.data_copying_test(train, holdout, generated[:15], num_cells=2)
