"""The audit: search, calibrate a threshold, and write what a person and a program need to read.

Writes into the output folder:
  matches.csv   synthetic,rank,train,correlation,memorized (k rows per synthetic image)
  correlations.npz  the same as arrays: values and indices (N_synthetic, k), the threshold, and
                each training image's max correlation with the holdout set when one is given
  summary.json  counts, the threshold and its rule, fraction memorized, quantiles, zero-variance ids
  histogram.png, pairs.png, report.html (see `report.py`)
"""

from __future__ import annotations

import csv
import json
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

import memjax
from memjax.data import sources as sources_lib
from memjax.memorization import correlation
from memjax.memorization import detectors
from memjax.memorization import report as report_lib

_MAX_IDS_LISTED = 100


def run_audit(out_dir: str | pathlib.Path, *, synthetic: Any, train: Any, holdout: Any = None,
              k: int = 1, threshold: float = 0.95, holdout_percentile: float = 95.0,
              block_size: int | None = None, mesh: Mesh | None = None,
              precision: str = "auto", num_pairs: int = 8, redact_training_images: bool = False,
              progress: bool = True,
              holdout_max_correlation: np.ndarray | None = None) -> dict[str, Any]:
  """Audits `synthetic` against `train`; returns the summary that it writes to summary.json.

  With `holdout` (real images of other patients, never trained on) the threshold is calibrated
  by Dar et al.'s rule; without it the fixed `threshold` is used. `holdout_max_correlation`,
  each training image's max correlation with `holdout` from an earlier audit of the same two
  sets (its correlations.npz), spares that search when several generators are audited.
  """
  # Settings are checked before hours of searching, not after.
  if holdout is None:
    detectors.fixed_threshold(threshold)
  else:
    detectors.check_percentile(holdout_percentile)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  synthetic = sources_lib.open_source(synthetic)
  train = sources_lib.open_source(train)
  sources_lib.check_same_shape(synthetic, train)
  if holdout is not None:
    holdout = sources_lib.open_source(holdout)
    sources_lib.check_same_shape(holdout, train)

  start = time.perf_counter()
  result = correlation.search_correlation(synthetic, train, k, block_size=block_size, mesh=mesh,
                                          precision=precision, progress=progress,
                                          description="synthetic vs training")
  search_seconds = time.perf_counter() - start
  max_correlation = result.values[:, 0]

  holdout_max = None
  if holdout is not None and holdout_max_correlation is not None:
    holdout_max = np.asarray(holdout_max_correlation)
    if holdout_max.shape != (len(train),):
      raise ValueError(f"holdout_max_correlation has shape {holdout_max.shape}; expected "
                       f"({len(train)},), one value per image of {train.description}")
    chosen = detectors.holdout_threshold(holdout_max, holdout_percentile, len(holdout))
  elif holdout is not None:
    calibration = correlation.search_correlation(train, holdout, 1, block_size=block_size,
                                                  mesh=mesh, precision=precision,
                                                  progress=progress,
                                                  description="training vs holdout",
                                                  names=("training", "holdout"))
    holdout_max = calibration.values[:, 0]
    chosen = detectors.holdout_threshold(holdout_max, holdout_percentile, len(holdout))
  else:
    chosen = detectors.fixed_threshold(threshold)

  memorized = detectors.is_memorized(max_correlation, chosen.value)
  summary = _summary(synthetic, train, holdout, result, holdout_max, chosen, memorized, k,
                     search_seconds)
  if jax.process_index() != 0:  # every host holds the result; one writes it
    return summary
  _write_matches(out_dir / "matches.csv", synthetic, train, result, memorized)
  arrays = {"values": result.values, "indices": result.indices, "threshold": chosen.value}
  if holdout_max is not None:
    arrays["holdout_max_correlation"] = holdout_max
  np.savez(out_dir / "correlations.npz", **arrays)
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  report_lib.write_audit_report(
      out_dir, synthetic=synthetic, train=train, max_correlation=max_correlation,
      best_index=result.indices[:, 0], threshold=chosen.value,
      threshold_rule=chosen.description, summary=summary,
      holdout_max_correlation=holdout_max, num_pairs=num_pairs,
      redact_training_images=redact_training_images)
  logging.info("audit written to %s: %d of %d synthetic images memorized (threshold %.4f)",
               out_dir, int(memorized.sum()), len(synthetic), chosen.value)
  return summary


def _write_matches(path, synthetic, train, result, memorized):
  """k rows per synthetic image; `memorized` is filled on the rank-1 rows only."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["synthetic", "rank", "train", "correlation", "memorized"])
    for i, synthetic_id in enumerate(synthetic.ids()):
      for rank in range(result.values.shape[1]):
        j = int(result.indices[i, rank])
        value = result.values[i, rank]
        defined = j >= 0 and np.isfinite(value)
        writer.writerow([
            synthetic_id, rank + 1, train.image_id(j) if defined else "",
            f"{value:.6f}" if defined else "",
            ("true" if memorized[i] else "false") if rank == 0 and defined else ""])


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
  defined = values[np.isfinite(values)].astype(np.float64)
  if defined.size == 0:
    return None
  q = np.percentile(defined, [0, 5, 25, 50, 75, 95, 100])
  return {"min": q[0], "q05": q[1], "q25": q[2], "median": q[3], "q75": q[4], "q95": q[5],
          "max": q[6], "mean": float(defined.mean())}


def _ids(source, indices) -> dict[str, Any]:
  return {"count": int(len(indices)),
          "ids": [source.image_id(int(i)) for i in indices[:_MAX_IDS_LISTED]]}


def _describe(source) -> dict[str, Any] | None:
  if source is None:
    return None
  return {"source": source.description, "count": len(source), "image_shape": list(source.shape)}


def _summary(synthetic, train, holdout, result, holdout_max, chosen, memorized, k,
             search_seconds) -> dict[str, Any]:
  max_correlation = result.values[:, 0]
  defined = int(np.isfinite(max_correlation).sum())
  summary = {
      "memjax_version": memjax.__version__,
      "measure": "maximum Pearson correlation over all pixels/voxels and channels",
      "synthetic": _describe(synthetic),
      "train": _describe(train),
      "holdout": _describe(holdout),
      "k": k,
      "threshold": {"value": chosen.value, "rule": chosen.rule,
                    "description": chosen.description},
      "num_synthetic_with_correlation": defined,
      "num_memorized": int(memorized.sum()),
      "fraction_memorized": (float(memorized.sum()) / defined) if defined else None,
      "fraction_above": {f"{t:.2f}": detectors.fraction_above(max_correlation, t)
                         for t in detectors.FIXED_THRESHOLDS},
      "max_correlation_quantiles": _quantiles(max_correlation),
      "holdout_max_correlation_quantiles": (_quantiles(holdout_max)
                                            if holdout_max is not None else None),
      "zero_variance": {"synthetic": _ids(synthetic, result.zero_variance_synthetic),
                        "train": _ids(train, result.zero_variance_train)},
      "search": {"seconds": search_seconds, "precision": result.precision,
                 "devices": result.num_devices},
  }
  return _json_safe(summary)


def _json_safe(value):
  """NaN and numpy scalars as JSON: NaN becomes null."""
  if isinstance(value, dict):
    return {key: _json_safe(v) for key, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if not np.isfinite(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value
