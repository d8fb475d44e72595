"""The audit's decision rules and its checks of settings, in process."""

import numpy as np
import pytest

from memjax.memorization import audit
from memjax.memorization import detectors


def test_bad_settings_fail_before_any_search(tmp_path, rng):
  train = rng.random((10, 4, 4), dtype=np.float32)

  class Unreadable:
    """A synthetic set whose pixels must never be read: settings fail first."""
    description = "unreadable"
    shape = (4, 4)
    dtype = np.dtype(np.float32)

    def __len__(self):
      return 3

    def read(self, *args, **kwargs):
      raise AssertionError("the search ran before the settings were checked")

    read_into = read

  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  sources.ImageSource.register(Unreadable)
  with pytest.raises(ValueError, match=r"threshold must lie in \[-1, 0.99999\]"):
    audit.run_audit(tmp_path, synthetic=Unreadable(), train=train, threshold=1.0)
  with pytest.raises(ValueError, match="percentile"):
    audit.run_audit(tmp_path, synthetic=Unreadable(), train=train, holdout=train,
                    holdout_percentile=100.0)


def test_holdout_threshold_is_the_95th_percentile_and_warns_on_small_holdouts():
  best = np.linspace(0.0, 1.0, 201)
  best[3] = np.nan  # no correlation: left out
  threshold = detectors.holdout_threshold(best, 95.0, num_holdout=500)
  assert threshold.value == pytest.approx(np.percentile(np.delete(best, 3), 95.0))
  assert threshold.rule == "holdout_percentile" and "biased low" not in threshold.description
  small = detectors.holdout_threshold(best, 95.0, num_holdout=50)
  assert "biased low" in small.description


def test_memorized_means_at_or_above_and_undefined_is_never_memorized():
  best = np.array([0.5, 0.95, np.nan, 0.951, 1.0])
  np.testing.assert_array_equal(detectors.is_memorized(best, 0.95),
                                [False, True, False, True, True])
  assert detectors.fraction_above(best, 0.95) == pytest.approx(3 / 4)
  assert np.isnan(detectors.fraction_above(np.array([np.nan]), 0.9))


def test_a_given_holdout_calibration_spares_the_search_and_decides_alike(tmp_path, rng):
  train = rng.random((12, 6, 6), dtype=np.float32)
  holdout = train + 0.3 * rng.random((12, 6, 6), dtype=np.float32)
  synthetic = np.concatenate([train[:3], rng.random((5, 6, 6), dtype=np.float32)])
  options = dict(synthetic=synthetic, train=train, holdout=holdout, progress=False,
                 num_pairs=0)
  searched = audit.run_audit(tmp_path / "searched", **options)
  with np.load(tmp_path / "searched" / "correlations.npz") as stored:
    calibration = stored["holdout_max_correlation"]
  # A different calibration moves the threshold: the given values are the ones used.
  given = audit.run_audit(tmp_path / "given", holdout_max_correlation=calibration, **options)
  assert given["threshold"] == searched["threshold"]
  assert given["fraction_memorized"] == searched["fraction_memorized"]
  lowered = audit.run_audit(tmp_path / "lowered", holdout_max_correlation=calibration - 0.5,
                            **options)
  assert lowered["threshold"]["value"] == pytest.approx(searched["threshold"]["value"] - 0.5)
  with pytest.raises(ValueError, match="one value per image"):
    audit.run_audit(tmp_path / "bad", holdout_max_correlation=calibration[:-1], **options)


def shift_invariant_embedding(images: np.ndarray) -> np.ndarray:
  """|FFT| of each image: a circular shift leaves it unchanged, as a trained encoder would."""
  images = np.asarray(images, np.float64)
  spectrum = np.abs(np.fft.rfft2(images, axes=(1, 2))).reshape(len(images), -1)
  return spectrum[:, 1:].astype(np.float32)  # without the mean (DC), which all images share


def correlation_float64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a.reshape(len(a), -1).astype(np.float64)
  b = b.reshape(len(b), -1).astype(np.float64)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  b /= np.linalg.norm(b, axis=1, keepdims=True)
  return a @ b.T


@pytest.fixture
def planted(rng):
  """20 training images, 20 held-out ones; synthetic: an exact copy of train 3, a circularly
  shifted copy of train 5 (pixels miss it, the shift-invariant embedding does not), 6 novel."""
  train = rng.random((20, 12, 12), dtype=np.float32)
  holdout = rng.random((20, 12, 12), dtype=np.float32)
  synthetic = np.concatenate([train[3:4], np.roll(train[5:6], (4, 3), axis=(1, 2)),
                              rng.random((6, 12, 12), dtype=np.float32)])
  return dict(synthetic=synthetic, train=train, holdout=holdout)


def test_both_detectors_find_their_copies_and_write_both(tmp_path, planted):
  k = 3
  summary = audit.run_audit(tmp_path, **planted, k=k, detector="both",
                            embed_fn=shift_invariant_embedding, encoder_description="|FFT|",
                            progress=False, num_pairs=2)
  embedded = {name: shift_invariant_embedding(images) for name, images in planted.items()}
  expected = {
      "correlation": correlation_float64(planted["synthetic"], planted["train"]),
      "embedding": correlation_float64(embedded["synthetic"], embedded["train"]),
  }
  calibration = {
      "correlation": correlation_float64(planted["train"], planted["holdout"]).max(axis=1),
      "embedding": correlation_float64(embedded["train"], embedded["holdout"]).max(axis=1),
  }
  with np.load(tmp_path / "correlations.npz") as stored:
    for measure, prefix in (("correlation", ""), ("embedding", "embedding_")):
      order = np.argsort(-expected[measure], axis=1)[:, :k]
      np.testing.assert_array_equal(stored[prefix + "indices"], order)
      np.testing.assert_allclose(stored[prefix + "values"],
                                 np.take_along_axis(expected[measure], order, axis=1), atol=2e-5)
      np.testing.assert_allclose(stored[prefix + "holdout_max_correlation"],
                                 calibration[measure], atol=2e-5)
      threshold = np.percentile(calibration[measure], 95.0)
      assert float(stored[prefix + "threshold"]) == pytest.approx(threshold, abs=2e-5)
      assert summary["detectors"][measure]["threshold"]["value"] == pytest.approx(threshold,
                                                                                 abs=2e-5)
  with np.load(tmp_path / "embeddings.npz") as stored:
    for name in ("synthetic", "train", "holdout"):
      np.testing.assert_allclose(stored[name], embedded[name], rtol=1e-6)

  # The exact copy is found by both, the shifted one by the embedding only; the novel images as
  # the float64 reference decides.
  flagged = {measure: expected[measure].max(axis=1)
             >= np.percentile(calibration[measure], 95.0) for measure in expected}
  assert flagged["correlation"][:2].tolist() == [True, False]
  assert flagged["embedding"][:2].tolist() == [True, True]
  assert summary["detector"] == "correlation,embedding"
  assert summary["detectors"]["embedding"]["encoder"] == "|FFT|"
  assert (summary["num_memorized"] == summary["detectors"]["correlation"]["num_memorized"]
          == flagged["correlation"].sum())
  assert summary["detectors"]["embedding"]["num_memorized"] == flagged["embedding"].sum()
  pixels, embeddings = flagged["correlation"], flagged["embedding"]
  assert summary["agreement"] == {
      "memorized_by_both": np.sum(pixels & embeddings),
      "memorized_by_correlation_only": np.sum(pixels & ~embeddings),
      "memorized_by_embedding_only": np.sum(~pixels & embeddings),
      "memorized_by_either": np.sum(pixels | embeddings),
      "same_best_match": np.sum(expected["correlation"].argmax(1)
                                == expected["embedding"].argmax(1))}
  lines = (tmp_path / "matches.csv").read_text().splitlines()
  assert lines[0] == ("synthetic,rank,train,correlation,memorized,embedding_train,"
                      "embedding_correlation,embedding_memorized")
  assert len(lines) == 1 + k * 8
  exact, shifted = lines[1].split(","), lines[1 + k].split(",")
  assert exact[:3] == ["0", "1", "3"] and exact[4] == "true" and exact[5] == "3"
  assert exact[7] == "true"
  assert shifted[4] == "false" and shifted[5] == "5" and shifted[7] == "true"
  assert lines[2].split(",")[4] == lines[2].split(",")[7] == ""  # memorized: rank 1 only

  for name in ("histogram", "pairs", "histogram_embedding", "pairs_embedding", "agreement"):
    assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
  page = (tmp_path / "report.html").read_text("utf-8")
  assert 'id="pairs-table"' in page and 'id="pairs-table-embedding"' in page
  assert "memorized_by_embedding_only" in page and "Dar et al." in page


def test_the_embedding_detector_alone_skips_the_pixel_search(tmp_path, planted, monkeypatch):
  from memjax.memorization import search as search_lib  # pylint: disable=g-import-not-at-top
  searched = []
  original = search_lib.search

  def counting(synthetic, train, *args, **kwargs):
    searched.append(search_lib.as_source(synthetic, "").shape)
    return original(synthetic, train, *args, **kwargs)

  monkeypatch.setattr(search_lib, "search", counting)
  summary = audit.run_audit(tmp_path, **planted, k=1, detector="embedding",
                            embed_fn=shift_invariant_embedding, progress=False, num_pairs=1)
  dim = shift_invariant_embedding(planted["train"][:1]).shape[1]
  assert searched == [(1, dim), (1, dim)]  # embeddings searched, no pixels
  assert summary["detector"] == "embedding" and list(summary["detectors"]) == ["embedding"]
  embedded = {name: shift_invariant_embedding(images) for name, images in planted.items()}
  threshold = np.percentile(
      correlation_float64(embedded["train"], embedded["holdout"]).max(axis=1), 95.0)
  flagged = correlation_float64(embedded["synthetic"], embedded["train"]).max(axis=1) >= threshold
  assert flagged[:2].all() and summary["num_memorized"] == flagged.sum()
  assert "contrastive embeddings" in summary["measure"]
  assert "correlation of embeddings" in summary["threshold"]["description"]
  lines = (tmp_path / "matches.csv").read_text().splitlines()
  assert lines[0] == "synthetic,rank,embedding_train,embedding_correlation,embedding_memorized"
  with np.load(tmp_path / "correlations.npz") as stored:
    assert sorted(stored) == ["embedding_holdout_max_correlation", "embedding_indices",
                              "embedding_threshold", "embedding_values",
                              "embedding_zero_variance_synthetic", "embedding_zero_variance_train"]
  page = (tmp_path / "report.html").read_text("utf-8")
  assert "maximum embedding correlation" in page and "Detector 1" not in page
  assert not (tmp_path / "agreement.png").exists()


def test_detector_settings_are_checked(tmp_path, planted, monkeypatch):
  with pytest.raises(ValueError, match="unknown detector 'pixels'"):
    audit.run_audit(tmp_path, **planted, detector="pixels")
  with pytest.raises(ValueError, match="needs a trained contrastive encoder.*audit.encoder"):
    audit.run_audit(tmp_path, **planted, detector="both")

  def wrong_encoder(images):
    raise ValueError("the encoder was trained on images of shape (8, 8, 1)")

  def no_search(*args, **kwargs):
    raise AssertionError("the search ran before the encoder was tried")

  from memjax.memorization import correlation  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(correlation, "search_correlation", no_search)
  with pytest.raises(ValueError, match=r"cannot embed the images of array \(0, shape \(12, 12\)\)"
                                       r": the encoder was trained"):
    audit.run_audit(tmp_path, **planted, detector="both", embed_fn=wrong_encoder)
  assert not (tmp_path / "summary.json").exists()
