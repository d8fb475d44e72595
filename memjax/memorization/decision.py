"""The decision first: what was flagged, what the rule flags by chance, how sure the threshold is,
what may be wrong with the calibration, and a plain verdict with its reasons.

The verdict's rule (config.audit.copy_level, config.audit.calibration_margin):

* "do not release" when any synthetic image reaches `copy_level` (default 0.9999) by any detector:
  it is a copy of a training image (up to brightness and contrast, and for the "transformed"
  detector a flip, turn or shift);
* "review before release" when a detector flags more synthetic images than its rule flags by
  chance alone (above the 95% interval of the expected false positives), or when a calibration
  warning stands and anything is flagged;
* "no evidence of copying beyond chance" otherwise.

The expected false positives come from the held-out distribution: the share of training images
whose best held-out value reaches the threshold (Dar et al.'s rule sets it near 5%), with its
Wilson interval over the held-out values, times the synthetic images with a defined value. The
threshold's interval is a percentile bootstrap over the same values. Without a held-out set the
threshold is fixed and the false positives are unknown, which the reasons say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from memjax.memorization.result import AuditResult
from memjax.memorization.validation import wilson_interval

COPY_LEVEL = 0.9999
CALIBRATION_MARGIN = 0.01
BOOTSTRAP_SAMPLES = 1000
_BOOTSTRAP_VALUES_AT_ONCE = 4_000_000

DO_NOT_RELEASE = "do not release"
REVIEW = "review before release"
NO_EVIDENCE = "no evidence of copying beyond chance"
NO_CORRELATION = "nothing could be compared"
RULE = (f"'{DO_NOT_RELEASE}' when any synthetic image reaches the copy level by any detector; "
        f"'{REVIEW}' when a detector flags more synthetic images than its rule flags by chance "
        "(above the 95% interval), or when a calibration warning stands and anything is flagged; "
        f"'{NO_EVIDENCE}' otherwise; '{NO_CORRELATION}' when no synthetic image has a defined "
        "value by any detector")


@dataclasses.dataclass(frozen=True)
class Chance:
  """How many synthetic images a detector's rule flags by chance alone: the expected count and
  its 95% interval, from `rate` (the share of `num_values` held-out values at or above the
  threshold)."""
  expected: float
  low: float
  high: float
  rate: float
  num_values: int


def by_chance(holdout_max: np.ndarray | None, threshold: float, num_defined: int
              ) -> Chance | None:
  """The false positives expected among `num_defined` novel synthetic images (None without a
  held-out distribution)."""
  if holdout_max is None:
    return None
  values = np.asarray(holdout_max, np.float64)
  values = values[np.isfinite(values)]
  if not values.size:
    return None
  flagged = int(np.sum(values >= threshold))
  low, high = wilson_interval(flagged, values.size)
  rate = flagged / values.size
  return Chance(rate * num_defined, low * num_defined, high * num_defined, rate, values.size)


def threshold_interval(holdout_max: np.ndarray | None, percentile: float, *,
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                       ) -> tuple[float, float] | None:
  """The 95% percentile-bootstrap interval of Dar et al.'s threshold (the `percentile` of the
  held-out values), resampling the values with replacement; None without them."""
  if holdout_max is None:
    return None
  values = np.asarray(holdout_max, np.float64)
  values = values[np.isfinite(values)]
  if values.size < 2:
    return None
  rng = np.random.default_rng(seed)
  rows = max(1, _BOOTSTRAP_VALUES_AT_ONCE // values.size)
  estimates = []
  for start in range(0, samples, rows):
    count = min(rows, samples - start)
    draws = values[rng.integers(0, values.size, (count, values.size))]
    estimates.append(np.percentile(draws, percentile, axis=1))
  low, high = np.percentile(np.concatenate(estimates), [2.5, 97.5])
  return float(low), float(high)


def calibration_warnings(result: AuditResult, margin: float = CALIBRATION_MARGIN) -> list[str]:
  """Sentences on a calibration set that looks like the training subjects: a threshold within
  `margin` of 1, or held-out images whose best values sit near 1. Empty when all is well."""
  holdout_max = result.holdout_max_correlation
  if holdout_max is None or result.threshold_kind == "fixed":
    return []
  values = np.asarray(holdout_max, np.float64)
  values = values[np.isfinite(values)]
  if not values.size:
    return []
  warnings = []
  median = float(np.median(values))
  name = _name(result)
  lets_through = (f"Copies altered enough to fall below {result.threshold:.4f} (a little noise, "
                  "a shift or a flip) are then not flagged.")
  if result.threshold >= 1 - margin:
    warnings.append(
        f"The {name} threshold {result.threshold:.4f} is within {margin:g} of 1: held-out and "
        f"training images are nearly as alike as copies (median best held-out value "
        f"{median:.4f}). A held-out set must hold other patients' images; neighbouring slices "
        f"or other scans of training subjects make the threshold too high. {lets_through}")
  elif median >= 1 - 2 * margin:
    warnings.append(
        f"Half of the training images have a held-out image at a {name} of {median:.4f} or "
        f"more: the held-out images may be of the training subjects (neighbouring slices, "
        f"repeat scans). {lets_through}")
  return warnings


def decide(results: Sequence[AuditResult], *, percentile: float = 95.0,
           copy_level: float = COPY_LEVEL, margin: float = CALIBRATION_MARGIN) -> dict[str, Any]:
  """The decision of an audit as summary.json holds it under "decision", and its "warnings"."""
  warnings, reasons, per_detector = [], [], {}
  verdict = NO_EVIDENCE
  for result in results:
    best = result.max_correlation
    defined = np.isfinite(best)
    num_defined = int(defined.sum())
    flagged = int(result.memorized.sum())
    copies = np.flatnonzero(defined & (np.where(defined, best, -np.inf) >= copy_level))
    chance = by_chance(result.holdout_max_correlation, result.threshold, num_defined)
    interval = (threshold_interval(result.holdout_max_correlation, percentile)
                if result.threshold_kind != "fixed" else None)
    detector_warnings = calibration_warnings(result, margin)
    warnings += detector_warnings
    name = _name(result)
    if copies.size:
      verdict = DO_NOT_RELEASE
      lowest = float(best[copies].min())
      copy = "is a copy of a training image" if copies.size == 1 else "are copies of training images"
      lowest_text = f"; the lowest {lowest:.4f}" if copies.size > 1 and lowest < 1 else ""
      reasons.append(f"{_count(copies.size)} {copy} by {name} (r ≥ {copy_level:g}{lowest_text})")
    if chance is not None:
      beyond = flagged > chance.high
      spread = ("" if interval is None else
                f" (the threshold's 95% bootstrap interval: {interval[0]:.4f}–{interval[1]:.4f})")
      reasons.append(f"{name}: {flagged} of {num_defined} flagged at {result.threshold:.4f}"
                     f"{spread}; by chance alone the rule flags about {chance.expected:.1f} (95%: "
                     f"{chance.low:.1f}–{chance.high:.1f})"
                     + (", so more are flagged than chance explains" if beyond else ""))
      if beyond and verdict != DO_NOT_RELEASE:
        verdict = REVIEW
    else:
      reasons.append(f"{name}: {flagged} of {num_defined} flagged at the fixed threshold "
                     f"{result.threshold:.4f}; without a held-out set, how many the rule flags "
                     "by chance is unknown")
      if flagged and verdict != DO_NOT_RELEASE:
        verdict = REVIEW
    if detector_warnings and flagged and verdict == NO_EVIDENCE:
      verdict = REVIEW
    per_detector[result.measure] = {
        "flagged": flagged, "with_a_value": num_defined, "copies": int(copies.size),
        "expected_by_chance": None if chance is None else {
            "expected": chance.expected, "low": chance.low, "high": chance.high,
            "rate": chance.rate, "held_out_values": chance.num_values},
        "threshold": result.threshold,
        "threshold_interval": None if interval is None else list(interval)}
  if results and all(item["with_a_value"] == 0 for item in per_detector.values()):
    verdict = NO_CORRELATION
    count = len(results[0].max_correlation)
    reasons.insert(0, f"none of the {_count(count)} has a defined correlation with any training "
                      "image (constant images, or training images that all are): nothing was "
                      "compared")
  return {"verdict": verdict, "reasons": reasons, "rule": RULE, "copy_level": copy_level,
          "calibration_margin": margin, "detectors": per_detector}, warnings


def _name(result: AuditResult) -> str:
  from memjax.memorization import plugins  # pylint: disable=g-import-not-at-top
  return plugins.get(result.measure).words["name"]


def _count(count: int) -> str:
  return f"{count} synthetic image" + ("" if count == 1 else "s")
