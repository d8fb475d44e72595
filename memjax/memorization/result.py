"""What one detector of an audit found: `AuditResult`, from the search to the summary and the page.

The audit builds one per detector (memorization/plugins: "correlation" on pixels, "embedding" on
a contrastive encoder's embeddings, "transformed" under flips, turns and shifts); summary.json, matches.csv, correlations.npz and the report pages are all
written from it, and `read_results` rebuilds it from correlations.npz and summary.json (the demo
reuses a finished audit that way).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from memjax import outputs

_EMPTY = np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class AuditResult:
  """One detector's findings: every synthetic image's k best training matches and the decision.

  measure: the detector's registered name (memorization/plugins), e.g. "correlation" (pixels),
    "embedding" (a contrastive encoder's embeddings) or "transformed".
  values: (N_synthetic, k) correlations, descending; NaN where undefined (zero variance).
  indices: (N_synthetic, k) int64 into the training set; -1 where undefined.
  threshold: images whose best correlation is at or above it are memorized.
  threshold_rule: one sentence saying how the threshold was chosen.
  threshold_kind: "holdout_percentile" (Dar et al.'s calibration) or "fixed".
  holdout_max_correlation: (N_train,) each training image's best correlation with the held-out
    real images (what a calibrated threshold is the percentile of), or None.
  zero_variance_synthetic, zero_variance_train: indices of the images with no correlation.
  seconds, precision, num_devices: how the search ran. encoder: the embedding's encoder.
  details: per-synthetic arrays of the detector's own (the transform of each "transformed"
    match: "symmetry" and "shift"), written to correlations.npz and read back.
  """
  measure: str
  values: np.ndarray
  indices: np.ndarray
  threshold: float
  threshold_rule: str
  threshold_kind: str = "fixed"
  holdout_max_correlation: np.ndarray | None = None
  zero_variance_synthetic: np.ndarray = dataclasses.field(default_factory=lambda: _EMPTY)
  zero_variance_train: np.ndarray = dataclasses.field(default_factory=lambda: _EMPTY)
  seconds: float = 0.0
  precision: str = "float32"
  num_devices: int = 1
  encoder: str | None = None
  details: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_best(cls, measure: str, max_correlation: Any, best_index: Any, threshold: float,
                threshold_rule: str, holdout_max_correlation: Any = None) -> AuditResult:
    """A result that holds only each synthetic image's best match (k = 1)."""
    values = np.asarray(max_correlation)
    index = np.asarray(best_index)
    return cls(measure, values.reshape(values.shape + (1,)) if values.ndim == 1 else values,
               index.reshape(index.shape + (1,)) if index.ndim == 1 else index,
               threshold, threshold_rule, holdout_max_correlation=holdout_max_correlation)

  @property
  def max_correlation(self) -> np.ndarray:
    """(N_synthetic,) each synthetic image's best correlation; NaN where undefined."""
    return self.values[:, 0]

  @property
  def best_index(self) -> np.ndarray:
    """(N_synthetic,) the training image that gave it; -1 where undefined."""
    return self.indices[:, 0]

  @property
  def memorized(self) -> np.ndarray:
    """(N_synthetic,) bool: a defined best correlation at or above the threshold."""
    best = self.max_correlation
    return np.where(np.isfinite(best), best, -np.inf) >= self.threshold

  @property
  def prefix(self) -> str:
    """The prefix of this detector's arrays in correlations.npz ("" for pixel correlation)."""
    return array_prefix(self.measure)

  def arrays(self) -> dict[str, np.ndarray]:
    """What correlations.npz holds of this detector."""
    arrays = {self.prefix + "values": self.values, self.prefix + "indices": self.indices,
              self.prefix + "threshold": np.float64(self.threshold),
              self.prefix + "zero_variance_synthetic": np.asarray(self.zero_variance_synthetic),
              self.prefix + "zero_variance_train": np.asarray(self.zero_variance_train)}
    if self.holdout_max_correlation is not None:
      arrays[self.prefix + "holdout_max_correlation"] = self.holdout_max_correlation
    for name, value in self.details.items():
      arrays[self.prefix + _DETAIL + name] = np.asarray(value)
    return arrays


_DETAIL = "detail_"


def array_prefix(measure: str) -> str:
  """The prefix of a detector's arrays and matches.csv columns: none for pixel correlation (the
  first detector memjax had), "<name>_" for every other ("embedding_", "transformed_")."""
  return "" if measure == "correlation" else f"{measure}_"


def read_results(out_dir: str | pathlib.Path) -> list[AuditResult]:
  """The results of a finished audit in `out_dir`, from correlations.npz and summary.json (both
  from its current generation, so that an audit committing meanwhile cannot mix two runs)."""
  out_dir = outputs.results_folder(out_dir)
  summary = json.loads((out_dir / "summary.json").read_text())
  results = []
  with np.load(out_dir / "correlations.npz") as stored:
    for measure, item in summary["detectors"].items():
      prefix = array_prefix(measure)
      holdout = stored.get(prefix + "holdout_max_correlation")
      details = {name[len(prefix + _DETAIL):]: stored[name] for name in stored.files
                 if name.startswith(prefix + _DETAIL)}
      search = item.get("search", {})
      results.append(AuditResult(
          measure, stored[prefix + "values"], stored[prefix + "indices"],
          float(stored[prefix + "threshold"]), item["threshold"]["description"],
          item["threshold"]["rule"], holdout_max_correlation=holdout,
          zero_variance_synthetic=stored.get(prefix + "zero_variance_synthetic", _EMPTY),
          zero_variance_train=stored.get(prefix + "zero_variance_train", _EMPTY),
          seconds=float(search.get("seconds", 0.0)),
          precision=search.get("precision", "float32"),
          num_devices=int(search.get("devices", 1)), encoder=item.get("encoder"),
          details=details))
  return results
