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
