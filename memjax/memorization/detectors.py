"""Decision rules: when is a synthetic image a copy of a training image?

A threshold is calibrated, not guessed: Dar et al. (2023) call a synthetic sample a copy when it is
more similar to a training sample than the 95th percentile of each training sample's similarity to
its nearest held-out real sample, i.e. more similar than real, different patients usually are.
Fixed thresholds (0.90, 0.95, 0.99) are reported beside it. memjax counts an image at or above a
threshold (the report's histogram bins start at the threshold, so its bars agree with the count).
"""

from __future__ import annotations

import dataclasses

import numpy as np

FIXED_THRESHOLDS = (0.90, 0.95, 0.99)


@dataclasses.dataclass(frozen=True)
class Threshold:
  value: float
  rule: str  # "holdout_percentile" or "fixed"
  description: str  # one sentence for people


def holdout_threshold(holdout_max: np.ndarray, percentile: float = 95.0,
                      num_holdout: int | None = None) -> Threshold:
  """Dar et al.'s rule from each training image's best similarity with the held-out set.

  A best match over fewer images is lower, so a holdout set much smaller than the training set
  gives a threshold that is biased low; the description says so when `num_holdout` shows it.
  """
  defined = holdout_max[np.isfinite(holdout_max)]
  if defined.size == 0:
    raise ValueError("no training image has a defined correlation with the holdout set "
                     "(all have zero variance?); give --config.audit.threshold instead")
  check_percentile(percentile)
  value = float(np.percentile(defined.astype(np.float64), percentile))
  description = (f"{percentile:g}th percentile of each training image's best correlation with "
                 f"the held-out real images, over {defined.size} training images (Dar et al. "
                 "2023): a synthetic image at least as similar to a training image is called "
                 "memorized")
  if num_holdout is not None and num_holdout < holdout_max.size / 2:
    description += (f". The holdout set ({num_holdout} images) is much smaller than the training "
                    f"set ({holdout_max.size}): a best match over fewer images is lower, so this "
                    "threshold is biased low and flags more images; use a holdout set of a "
                    "similar size")
  return Threshold(value=value, rule="holdout_percentile", description=description)


# Exact copies come out within 1e-5 of 1 (float32 rounding), so a threshold above this would miss
# some of them.
MAX_THRESHOLD = 0.99999


def check_percentile(percentile: float) -> None:
  if not 0.0 < percentile < 100.0:
    raise ValueError(f"the holdout percentile must be in (0, 100), got {percentile}")


def fixed_threshold(value: float) -> Threshold:
  if not -1.0 <= value <= MAX_THRESHOLD:
    raise ValueError(f"a correlation threshold must lie in [-1, {MAX_THRESHOLD}], got {value}: "
                     "correlations are exact to 1e-5, so exact copies may score a hair below 1")
  return Threshold(value=float(value), rule="fixed",
                   description=f"fixed threshold {value:g} (config.audit.threshold); give "
                               "--config.holdout to calibrate one on held-out real images")


def is_memorized(max_correlation: np.ndarray, threshold: float) -> np.ndarray:
  """True where the best correlation is at or above the threshold (False where undefined)."""
  return np.nan_to_num(max_correlation, nan=-np.inf) >= threshold


def fraction_above(max_correlation: np.ndarray, threshold: float) -> float:
  """Share of the images with a defined correlation at or above the threshold."""
  defined = np.isfinite(max_correlation)
  if not defined.any():
    return float("nan")
  return float(np.mean(max_correlation[defined] >= threshold))
