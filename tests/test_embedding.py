"""The embedding detector against brute force: Dar et al.'s cdist(..., 'correlation') in float64,
their 5th-percentile rule, images embedded in batches, and its errors."""

import numpy as np
import pytest
import scipy.spatial.distance

from memjax import parallel
from memjax.memorization import detectors
from memjax.memorization import embedding


def correlation_distance(a, b):
  """Dar et al.'s measure: scipy's 'correlation' distance (1 - Pearson), float64."""
  return scipy.spatial.distance.cdist(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                      "correlation")


@pytest.fixture(scope="module")
def embeddings():
  """Training, holdout and synthetic embeddings; synthetic 0-9 are near copies of training 3i."""
  rng = np.random.default_rng(0)
  train = rng.standard_normal((70, 32)).astype(np.float32)
  holdout = rng.standard_normal((50, 32)).astype(np.float32)
  synthetic = rng.standard_normal((25, 32)).astype(np.float32)
  synthetic[:10] = train[0:30:3] + 0.05 * rng.standard_normal((10, 32)).astype(np.float32)
  return train, holdout, synthetic


def test_top_k_and_threshold_match_brute_force(embeddings):
  train, holdout, synthetic = embeddings
  result = embedding.search_embeddings(synthetic, train, holdout, k=4, mesh=parallel.data_mesh(4),
                                       precision="float32", block_size=16)
  distance = correlation_distance(synthetic, train)
  order = np.argsort(distance, axis=1, kind="stable")[:, :4]
  np.testing.assert_array_equal(result.indices, order)
  np.testing.assert_allclose(result.values, 1.0 - np.take_along_axis(distance, order, axis=1),
                             atol=1e-5)
  # Dar et al.: the 5th percentile of each training sample's distance to its nearest holdout one.
  nearest_holdout = correlation_distance(train, holdout).min(axis=1)
  threshold = 1.0 - np.percentile(nearest_holdout, 5.0)
  assert result.threshold.value == pytest.approx(threshold, abs=1e-5)
  assert result.threshold.rule == "holdout_percentile"
  assert "embeddings" in result.threshold.description
  np.testing.assert_allclose(result.holdout_max, 1.0 - nearest_holdout, atol=1e-5)
  copies = 1.0 - distance.min(axis=1) >= threshold
  assert copies[:10].all()  # (novel ones pass the threshold 5% of the time, by its definition)
  np.testing.assert_array_equal(result.memorized, copies)
  np.testing.assert_array_equal(result.indices[:10, 0], np.arange(0, 30, 3))


def test_images_are_embedded_in_batches_of_their_stored_dtype(embeddings):
  train, holdout, synthetic = embeddings
  rng = np.random.default_rng(1)
  projection = rng.standard_normal((6 * 6, 32))
  seen = []

  def embed_fn(images):
    seen.append((images.dtype, images.shape))
    return images.reshape(len(images), -1).astype(np.float64) @ projection

  images = {name: rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)
            for name, n in (("train", 30), ("holdout", 20), ("synthetic", 11))}
  images["synthetic"][:3] = images["train"][[4, 9, 17]]
  result = embedding.search_embeddings(images["synthetic"], images["train"], images["holdout"],
                                       embed_fn=embed_fn, k=2, batch_size=8,
                                       precision="float32")
  assert all(dtype == np.uint8 and shape[0] <= 8 for dtype, shape in seen)
  want = {name: embed_fn(array).astype(np.float32) for name, array in images.items()}
  np.testing.assert_allclose(result.train_embeddings, want["train"], rtol=1e-6)
  direct = embedding.search_embeddings(want["synthetic"], want["train"], want["holdout"], k=2,
                                       precision="float32")
  np.testing.assert_array_equal(result.indices, direct.indices)
  np.testing.assert_array_equal(result.indices[:3, 0], [4, 9, 17])
  np.testing.assert_allclose(result.values[:3, 0], 1.0, atol=1e-5)
  assert result.memorized[:3].all()


def test_fixed_threshold_constant_embeddings_and_errors(embeddings):
  train, _, synthetic = embeddings
  synthetic = synthetic.copy()
  synthetic[5] = 1.0  # a constant embedding has no correlation
  result = embedding.search_embeddings(synthetic, train, k=1, threshold=0.9, precision="float32")
  assert result.threshold.rule == "fixed" and result.threshold.value == 0.9
  assert np.isnan(result.values[5, 0]) and result.indices[5, 0] == -1
  np.testing.assert_array_equal(result.zero_variance_synthetic, [5])
  assert not result.memorized[5]
  np.testing.assert_array_equal(
      result.memorized, detectors.is_memorized(result.values[:, 0], 0.9))
  with pytest.raises(ValueError, match="dimensions"):
    embedding.search_embeddings(synthetic[:, :10], train)
  with pytest.raises(ValueError, match="NaN"):
    embedding.embed(np.zeros((4, 3, 3), np.uint8), lambda x: np.full((len(x), 2), np.nan))
  with pytest.raises(ValueError, match=r"expected \(4, D\)"):
    embedding.embed(np.zeros((4, 3, 3), np.uint8), lambda x: np.zeros((1, 2)))
  with pytest.raises(ValueError, match="float"):
    embedding.search_embeddings(np.zeros((3, 2, 2), np.uint8), train)
