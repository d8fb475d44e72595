"""The audit: search, calibrate a threshold, and write what a person and a program need to read.

Two detectors, alone or together (`detector`): "correlation", the maximum Pearson correlation over
all pixels/voxels (Akbar, Wang & Eklund 2025), and "embedding", the maximum Pearson correlation of
a contrastive encoder's embeddings (Dar et al. 2023), which also finds shifted, flipped and
slightly rotated copies. Each is thresholded by the same rule: calibrated on a holdout set of real
images, or fixed.

Writes into the output folder:
  matches.csv   k rows per synthetic image: synthetic,rank,train,correlation,memorized for pixel
                correlation; embedding_train,embedding_correlation,embedding_memorized for the
                embedding detector (after the pixel columns when both ran); `memorized` on the
                rank-1 rows
  correlations.npz  the same as arrays: values and indices (N_synthetic, k), the threshold, and
                each training image's max correlation with the holdout set when one is given;
                the embedding detector's under the same names prefixed `embedding_`
  embeddings.npz  the embeddings searched (synthetic, train, holdout), with the embedding detector
  summary.json  counts, the threshold and its rule, fraction memorized, quantiles, zero-variance ids
                of the first detector at the top level; every detector's under `detectors`, and
                with both, how often they agree (`agreement`)
  histogram.png, pairs.png, report.html (see the `report` package); with both detectors also
                histogram_embedding.png, pairs_embedding.png and agreement.png
"""

from __future__ import annotations

from collections.abc import Callable
import csv
import dataclasses
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
from memjax.memorization import embedding as embedding_lib
from memjax.memorization import report as report_lib

_MAX_IDS_LISTED = 100
DETECTORS = ("correlation", "embedding", "both")
_MEASURE = {
    "correlation": "maximum Pearson correlation over all pixels/voxels and channels",
    "embedding": ("maximum Pearson correlation of contrastive embeddings (Dar et al. 2023; 1 "
                  "minus their 'correlation' distance)"),
}


@dataclasses.dataclass(frozen=True)
class _Found:
  """One detector's search and decision, in the form the writers take."""
  measure: str  # "correlation" or "embedding"
  values: np.ndarray  # (N_synthetic, k) descending
  indices: np.ndarray  # (N_synthetic, k); -1 where undefined
  threshold: detectors.Threshold
  memorized: np.ndarray
  holdout_max: np.ndarray | None
  zero_variance_synthetic: np.ndarray
  zero_variance_train: np.ndarray
  seconds: float
  precision: str
  num_devices: int
  encoder: str | None = None


def check_detector(detector: str, embed_fn: Callable[[np.ndarray], np.ndarray] | None) -> None:
  """Raises ValueError for an unknown detector or an embedding detector without an encoder."""
  if detector not in DETECTORS:
    raise ValueError(f"unknown detector {detector!r} (config.audit.detector); expected one of "
                     f"{', '.join(DETECTORS)}")
  if detector != "correlation" and embed_fn is None:
    raise ValueError(f"the {detector!r} detector needs a trained contrastive encoder: train one "
                     "with python launch.py --config=configs/demo_contrastive.py (or "
                     "cxr_/brats20_contrastive.py) --workdir=runs/encoder and give "
                     "--config.audit.encoder=runs/encoder")


def run_audit(out_dir: str | pathlib.Path, *, synthetic: Any, train: Any, holdout: Any = None,
              k: int = 1, threshold: float = 0.95, holdout_percentile: float = 95.0,
              block_size: int | None = None, mesh: Mesh | None = None,
              precision: str = "auto", num_pairs: int = 8, redact_training_images: bool = False,
              progress: bool = True,
              holdout_max_correlation: np.ndarray | None = None,
              detector: str = "correlation",
              embed_fn: Callable[[np.ndarray], np.ndarray] | None = None,
              encoder_description: str | None = None) -> dict[str, Any]:
  """Audits `synthetic` against `train`; returns the summary that it writes to summary.json.

  With `holdout` (real images of other patients, never trained on) the threshold is calibrated
  by Dar et al.'s rule; without it the fixed `threshold` is used. `holdout_max_correlation`,
  each training image's max pixel correlation with `holdout` from an earlier audit of the same
  two sets (its correlations.npz), spares that search when several generators are audited.
  `detector` is "correlation", "embedding" or "both"; the embedding detector embeds every set
  with `embed_fn` (images as a source reads them -> (N, D) embeddings; for a memjax encoder
  `memjax.train.contrastive.load_embedder(workdir)`), described by `encoder_description`.
  """
  # Settings are checked before hours of searching, not after.
  check_detector(detector, embed_fn)
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

  if embed_fn is not None and detector != "correlation":
    # An encoder that cannot embed these images fails now, not after the pixel search.
    try:
      embedding_lib.embed(synthetic.read(0, 1, dtype=None), embed_fn)
    except ValueError as e:
      raise ValueError(f"the encoder cannot embed the images of {synthetic.description} "
                       f"({synthetic.image_id(0)}, shape {synthetic.shape}): {e}") from e

  found = []
  if detector in ("correlation", "both"):
    found.append(_search_pixels(synthetic, train, holdout, k=k, threshold=threshold,
                                holdout_percentile=holdout_percentile, block_size=block_size,
                                mesh=mesh, precision=precision, progress=progress,
                                holdout_max_correlation=holdout_max_correlation))
  embedded = None
  if detector in ("embedding", "both"):
    start = time.perf_counter()
    embedded = embedding_lib.search_embeddings(
        synthetic, train, holdout, embed_fn=embed_fn, k=k, threshold=threshold,
        holdout_percentile=holdout_percentile, mesh=mesh, precision=precision,
        progress=progress)
    found.append(_Found(
        "embedding", embedded.values, embedded.indices, embedded.threshold, embedded.memorized,
        embedded.holdout_max, embedded.zero_variance_synthetic, embedded.zero_variance_train,
        time.perf_counter() - start, embedded.precision, embedded.num_devices,
        encoder=encoder_description or getattr(embed_fn, "description", None)))

  summary = _summary(synthetic, train, holdout, found, k)
  if jax.process_index() != 0:  # every host holds the result; one writes it
    return summary
  _write_matches(out_dir / "matches.csv", synthetic, train, found)
  arrays = {}
  for item in found:
    prefix = "" if item.measure == "correlation" else "embedding_"
    arrays.update({prefix + "values": item.values, prefix + "indices": item.indices,
                   prefix + "threshold": item.threshold.value})
    if item.holdout_max is not None:
      arrays[prefix + "holdout_max_correlation"] = item.holdout_max
  np.savez(out_dir / "correlations.npz", **arrays)
  if embedded is not None:
    vectors = {"synthetic": embedded.synthetic_embeddings, "train": embedded.train_embeddings}
    if embedded.holdout_embeddings is not None:
      vectors["holdout"] = embedded.holdout_embeddings
    np.savez(out_dir / "embeddings.npz", **vectors)
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  first = found[0]
  second = None
  if len(found) == 2:
    second = report_lib.Detection(
        "embedding", found[1].values[:, 0], found[1].indices[:, 0], found[1].threshold.value,
        found[1].threshold.description, found[1].holdout_max)
  report_lib.write_audit_report(
      out_dir, synthetic=synthetic, train=train, max_correlation=first.values[:, 0],
      best_index=first.indices[:, 0], threshold=first.threshold.value,
      threshold_rule=first.threshold.description, summary=_report_summary(summary),
      holdout_max_correlation=first.holdout_max, num_pairs=num_pairs,
      redact_training_images=redact_training_images, measure=first.measure, embedding=second,
      holdout=holdout)
  for item in found:
    logging.info("audit written to %s: %d of %d synthetic images memorized by %s (threshold "
                 "%.4f)", out_dir, int(item.memorized.sum()), len(synthetic), item.measure,
                 item.threshold.value)
  return summary


def _search_pixels(synthetic, train, holdout, *, k, threshold, holdout_percentile, block_size,
                   mesh, precision, progress, holdout_max_correlation) -> _Found:
  start = time.perf_counter()
  result = correlation.search_correlation(synthetic, train, k, block_size=block_size, mesh=mesh,
                                          precision=precision, progress=progress,
                                          description="synthetic vs training")
  seconds = time.perf_counter() - start
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
  return _Found("correlation", result.values, result.indices, chosen,
                detectors.is_memorized(result.values[:, 0], chosen.value), holdout_max,
                result.zero_variance_synthetic, result.zero_variance_train, seconds,
                result.precision, result.num_devices)


def _report_summary(summary: dict[str, Any]) -> dict[str, Any]:
  """The summary for the report's table: the first detector's figures are not repeated."""
  shown = {key: value for key, value in summary.items() if key != "detectors"}
  if summary["detector"] == "both":
    shown["embedding"] = summary["detectors"]["embedding"]
  return shown


def _write_matches(path, synthetic, train, found):
  """k rows per synthetic image; `memorized` is filled on the rank-1 rows only."""
  header = ["synthetic", "rank"]
  for item in found:
    if item.measure == "correlation":
      header += ["train", "correlation", "memorized"]
    else:
      header += ["embedding_train", "embedding_correlation", "embedding_memorized"]
  k = found[0].values.shape[1]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for i, synthetic_id in enumerate(synthetic.ids()):
      for rank in range(k):
        row = [synthetic_id, rank + 1]
        for item in found:
          j = int(item.indices[i, rank])
          value = item.values[i, rank]
          defined = j >= 0 and np.isfinite(value)
          row += [train.image_id(j) if defined else "", f"{value:.6f}" if defined else "",
                  ("true" if item.memorized[i] else "false") if rank == 0 and defined else ""]
        writer.writerow(row)


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


def _detector_summary(item: _Found, synthetic, train) -> dict[str, Any]:
  max_correlation = item.values[:, 0]
  defined = int(np.isfinite(max_correlation).sum())
  summary = {
      "measure": _MEASURE[item.measure],
      "threshold": {"value": item.threshold.value, "rule": item.threshold.rule,
                    "description": item.threshold.description},
      "num_synthetic_with_correlation": defined,
      "num_memorized": int(item.memorized.sum()),
      "fraction_memorized": (float(item.memorized.sum()) / defined) if defined else None,
      "fraction_above": {f"{t:.2f}": detectors.fraction_above(max_correlation, t)
                         for t in detectors.FIXED_THRESHOLDS},
      "max_correlation_quantiles": _quantiles(max_correlation),
      "holdout_max_correlation_quantiles": (_quantiles(item.holdout_max)
                                            if item.holdout_max is not None else None),
      "zero_variance": {"synthetic": _ids(synthetic, item.zero_variance_synthetic),
                        "train": _ids(train, item.zero_variance_train)},
      "search": {"seconds": item.seconds, "precision": item.precision,
                 "devices": item.num_devices},
  }
  if item.encoder is not None:
    summary["encoder"] = item.encoder
  return summary


def _summary(synthetic, train, holdout, found, k) -> dict[str, Any]:
  per_detector = {item.measure: _detector_summary(item, synthetic, train) for item in found}
  summary = {
      "memjax_version": memjax.__version__,
      "detector": "both" if len(found) == 2 else found[0].measure,
      "synthetic": _describe(synthetic),
      "train": _describe(train),
      "holdout": _describe(holdout),
      "k": k,
      **per_detector[found[0].measure],
      "detectors": per_detector,
  }
  if len(found) == 2:
    pixels, embeddings = found[0].memorized, found[1].memorized
    summary["agreement"] = {
        "memorized_by_both": int(np.sum(pixels & embeddings)),
        "memorized_by_correlation_only": int(np.sum(pixels & ~embeddings)),
        "memorized_by_embedding_only": int(np.sum(~pixels & embeddings)),
        "memorized_by_either": int(np.sum(pixels | embeddings)),
        "same_best_match": int(np.sum((found[0].indices[:, 0] == found[1].indices[:, 0])
                                      & (found[0].indices[:, 0] >= 0))),
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
