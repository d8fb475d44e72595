"""The audit: search, calibrate a threshold, and write what a person and a program need to read.

Detectors are plug-ins (memorization/plugins), any of them in one audit (`detectors`):
"correlation", the maximum Pearson correlation over all pixels/voxels (Akbar, Wang & Eklund 2025);
"embedding", the maximum Pearson correlation of a contrastive encoder's embeddings (Dar et al.
2023); "transformed", the maximum Pearson correlation under the image grid's flips, turns by 90
degrees and shifts, exactly. Each is thresholded by the same rule: calibrated on a holdout set of
real images, or fixed.

Writes into the output folder:
  matches.csv   k rows per synthetic image: synthetic,rank,train,correlation,memorized for pixel
                correlation; the same three columns with the detector's prefix for each other
                detector (embedding_train, ..., transformed_memorized), in the order they ran;
                `memorized` on the rank-1 rows
  correlations.npz  the same as arrays: values and indices (N_synthetic, k), the threshold, and
                each training image's max correlation with the holdout set when one is given;
                the other detectors' under the same names with their prefix (`embedding_`,
                `transformed_`; the transform of each match as transformed_detail_symmetry and
                transformed_detail_shift)
  embeddings.npz  the embeddings searched (synthetic, train, holdout), with the embedding detector
  summary.json  counts, the threshold and its rule, fraction memorized, quantiles, zero-variance ids
                of the first detector at the top level; every detector's under `detectors`, and
                with two, how often they agree (`agreement`)
  histogram.png, pairs.png, report.html (see the `report` package); every detector after the
                first adds histogram<suffix>.png and pairs<suffix>.png (_embedding,
                _transformed), and with two detectors, agreement.png
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
from memjax import outputs
from memjax import parallel
from memjax.data import sources as sources_lib
from memjax.memorization import decision as decision_lib
from memjax.memorization import detectors
from memjax.memorization import embedding as embedding_lib
from memjax.memorization import plugins
from memjax.memorization import precision as precision_lib
from memjax.memorization import provenance
from memjax.memorization import report as report_lib
from memjax.memorization import search as search_lib
from memjax.memorization.result import AuditResult

_MAX_IDS_LISTED = 100
DETECTORS = plugins.names()
# A held-out image whose best training match is this close to 1 is that training image, not a
# different patient: it is left out of the calibration (`_calibrate`).
OVERLAP_TOLERANCE = 1e-6
# Every file an audit writes; a re-run removes those it does not write again.
AUDIT_FILES = ("matches.csv", "correlations.npz", "embeddings.npz", "summary.json",
               "histogram.png", "pairs.png", "report.html", "agreement.png") + tuple(
                   f"{figure}{plugins.get(name).words['file_suffix']}.png"
                   for name in plugins.names() for figure in ("histogram", "pairs")
                   if plugins.get(name).words["file_suffix"])


@dataclasses.dataclass(frozen=True)
class AuditOptions:
  """How an audit searches, decides and reports; `from_config(config.audit)` builds it.

  detectors: the detectors that run, by their registered names (memorization/plugins):
    "correlation" (pixels), "embedding" (a contrastive encoder's embeddings), "transformed"
    (pixels under flips, turns by 90 degrees and shifts); a tuple or "a,b".
  detector: deprecated, the old single setting ("correlation", "embedding" or "both"); when
    given it wins over `detectors`, with a warning for "both".
  k: training matches kept per synthetic image (at most the training set's size).
  threshold: the fixed threshold, used without a holdout set.
  holdout_percentile: Dar et al.'s rule, with a holdout set.
  block_size: training images per streamed block (None: chosen by the search).
  precision: the correlation search's products: "auto", "float32" or "bfloat16x3".
  num_pairs: most similar pairs drawn in pairs.png and the report.
  redact_training_images: a report with no training pixels (report/redaction.py).
  progress: progress bars.
  encoder_description: the embedding detector's encoder, as the summary names it.
  memory_gb: the most memory a search may hold; images too large for it are searched in pieces
    of their pixels (memorization/pieces.py), so the audit fits whatever the image size.
  max_shift: the "transformed" detector's largest shift in pixels (None: an eighth of the side).
  copy_level: a synthetic image at or above it by any detector is a copy: the verdict is "do not
    release" (decision.py).
  calibration_margin: a calibrated threshold within it of 1 (or held-out values whose median is
    within twice it) is warned about: the held-out images may be of the training subjects.
  min_holdout_images: a holdout set smaller than this is refused: a percentile of best matches
    over so few images is biased low and its interval too wide to mean anything.
  """
  detectors: tuple[str, ...] | str = ("correlation",)
  detector: str | None = None
  k: int = 1
  threshold: float = 0.95
  holdout_percentile: float = 95.0
  block_size: int | None = None
  precision: str = "auto"
  num_pairs: int = 8
  redact_training_images: bool = False
  progress: bool = True
  encoder_description: str | None = None
  memory_gb: float = 2.0
  max_shift: int | None = None
  copy_level: float = decision_lib.COPY_LEVEL
  calibration_margin: float = decision_lib.CALIBRATION_MARGIN
  min_holdout_images: int = 10

  @property
  def detector_names(self) -> tuple[str, ...]:
    """The detectors that run, in order (a ValueError for an unknown name)."""
    return plugins.parse(self.detector if self.detector is not None else self.detectors)

  @classmethod
  def from_config(cls, audit: Any) -> AuditOptions:
    """The options of `config.audit` (an ml_collections ConfigDict or a dict)."""
    get = audit.get
    old = get("detector") or None
    if old:
      logging.warning("config.audit.detector is deprecated: use --config.audit.detectors=%s",
                      ",".join(plugins.parse(old)))
    return cls(detectors=get("detectors") or ("correlation",), detector=old, k=get("k", 1),
               threshold=get("threshold", 0.95),
               holdout_percentile=get("holdout_percentile", 95.0),
               block_size=get("block_size") or None, precision=get("precision", "auto"),
               num_pairs=get("num_pairs", 8),
               redact_training_images=bool(get("redact_training_images", False)),
               progress=bool(get("progress", True)), memory_gb=get("memory_gb", 2.0),
               max_shift=get("max_shift"),
               copy_level=get("copy_level", decision_lib.COPY_LEVEL),
               calibration_margin=get("calibration_margin", decision_lib.CALIBRATION_MARGIN),
               min_holdout_images=get("min_holdout_images", 10))

  @property
  def memory_bytes(self) -> int:
    return int(self.memory_gb * (1 << 30))

  def check(self, *, has_holdout: bool) -> None:
    """Raises ValueError naming the first setting that is wrong, before any work is done."""
    self.detector_names  # pylint: disable=pointless-statement
    if self.max_shift is not None and (isinstance(self.max_shift, bool) or not isinstance(
        self.max_shift, (int, np.integer)) or self.max_shift < 0):
      raise ValueError(f"config.audit.max_shift must be an integer of at least 0 (or None: an "
                       f"eighth of the image's side), got {self.max_shift!r}")
    for name, low in (("k", 1), ("num_pairs", 0), ("min_holdout_images", 1)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"config.audit.{name} must be an integer of at least {low}, got "
                         f"{value!r}")
    if self.block_size is not None and (not isinstance(self.block_size, (int, np.integer))
                                        or self.block_size < 1):
      raise ValueError(f"config.audit.block_size must be a positive integer (or 0: chosen by "
                       f"memjax), got {self.block_size!r}")
    if isinstance(self.memory_gb, bool) or not isinstance(
        self.memory_gb, (int, float)) or not self.memory_gb > 0:
      raise ValueError(f"config.audit.memory_gb must be a positive number, got "
                       f"{self.memory_gb!r}")
    for name, low, high in (("copy_level", 0.0, 1.0), ("calibration_margin", 0.0, 1.0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ValueError(f"config.audit.{name} must be a number in ({low:g}, {high:g}], got "
                         f"{value!r}")
    if self.precision not in precision_lib.PRECISIONS:
      raise ValueError(f"config.audit.precision must be one of "
                       f"{', '.join(precision_lib.PRECISIONS)}, got {self.precision!r}")
    if has_holdout:
      detectors.check_percentile(self.holdout_percentile)
    else:
      detectors.fixed_threshold(self.threshold)


class Audit(dict):
  """The audit's summary (a dict, as written to summary.json), with each detector's
  `AuditResult` in `results` (the order of summary["detectors"])."""

  def __init__(self, summary: dict[str, Any], results: list[AuditResult]):
    super().__init__(summary)
    self.results = results


def check_detector(detectors: str | tuple[str, ...],
                   embed_fn: Callable[[np.ndarray], np.ndarray] | None) -> None:
  """Raises ValueError for an unknown detector, or one that needs an encoder without it."""
  needing = [name for name in plugins.parse(detectors) if plugins.get(name).needs_encoder]
  if needing and embed_fn is None:
    raise ValueError(f"the {needing[0]!r} detector needs a trained contrastive encoder: train one "
                     "with python launch.py --config=configs/demo_contrastive.py (or "
                     "cxr_/brats20_contrastive.py) --workdir=runs/encoder and give "
                     "--config.audit.encoder=runs/encoder")


def run_audit(out_dir: str | pathlib.Path, *, synthetic: Any, train: Any, holdout: Any = None,
              options: AuditOptions | None = None, mesh: Mesh | None = None,
              embed_fn: Callable[[np.ndarray], np.ndarray] | None = None,
              holdout_max_correlation: np.ndarray | None = None,
              extra_outputs: dict[str, str] | None = None, **changes: Any) -> Audit:
  """Audits `synthetic` against `train`; returns the summary that it writes to summary.json.

  With `holdout` (real images of other patients, never trained on) the threshold is calibrated
  by Dar et al.'s rule; held-out images identical to a training image are left out of it with a
  warning (`_calibrate`; the embedding detector alone refuses a threshold at the limit of
  exactness instead). Without it the fixed threshold is used. `options` (or keyword changes
  of its fields, e.g. `k=5`) say how. `holdout_max_correlation`, each training image's max pixel
  correlation with `holdout` from an earlier audit of the same two sets (its correlations.npz),
  spares that search when several generators are audited. The embedding detector embeds every
  set with `embed_fn` (images as a source reads them -> (N, D) embeddings; for a memjax encoder
  `memjax.train.contrastive.load_embedder(workdir)`). `extra_outputs` (file name -> text) are
  written with the audit's files.

  Every file is written into a new generation folder that one atomic swap makes current
  (outputs.Staging): an audit that fails, or is killed at any instant, leaves the previous
  results in `out_dir` as they were.
  """
  options = dataclasses.replace(options or AuditOptions(), **changes)
  # Settings are checked before hours of searching, not after.
  options.check(has_holdout=holdout is not None)
  names = options.detector_names
  check_detector(names, embed_fn)
  synthetic = sources_lib.open_source(synthetic)
  train = sources_lib.open_source(train)
  holdout = sources_lib.open_source(holdout) if holdout is not None else None
  # One channel is one layout: (H, W, 1) samples against a folder of gray (H, W) images.
  synthetic, train, holdout = sources_lib.one_layout(synthetic, train, holdout)
  sources_lib.check_same_shape(synthetic, train)
  if holdout is not None:
    sources_lib.check_same_shape(holdout, train)
    if len(holdout) < options.min_holdout_images:
      raise ValueError(
          f"the holdout set {holdout.description} holds {len(holdout)} image"
          f"{'' if len(holdout) == 1 else 's'}: a calibrated threshold needs at least "
          f"{options.min_holdout_images} (a percentile of best matches over so few images is "
          "biased low and too uncertain to mean anything). Give held-out images of other "
          "patients, about as many as the training images, or accept a smaller set with "
          "--config.audit.min_holdout_images=N")
  if options.k > len(train):
    logging.warning("config.audit.k=%d is more than the %d training images of %s: keeping %d "
                    "matches per synthetic image", options.k, len(train), train.description,
                    len(train))
    options = dataclasses.replace(options, k=len(train))
  if embed_fn is not None and any(plugins.get(n).needs_encoder for n in names):
    # An encoder that cannot embed these images fails now, not after the pixel search.
    try:
      embedding_lib.embed(synthetic.read(0, 1, dtype=None), embed_fn)
    except ValueError as e:
      raise ValueError(f"the encoder cannot embed the images of {synthetic.description} "
                       f"({synthetic.image_id(0)}, shape {synthetic.shape}): {e}") from e
  mesh = mesh if mesh is not None else parallel.data_mesh()

  holdout_given = holdout
  overlap = None
  if (holdout is not None and holdout_max_correlation is None
      and not all(plugins.get(n).needs_encoder for n in names)):
    # The pixel search of training against holdout images: the pixel detector's calibration, and
    # for every pixel detector the check that no held-out image is a training image.
    holdout_max_correlation, holdout, overlap = _calibrate(train, holdout, options, mesh)
  context = plugins.AuditContext(synthetic=synthetic, train=train, holdout=holdout,
                                 options=options, mesh=mesh, embed_fn=embed_fn,
                                 holdout_max_correlation=holdout_max_correlation)
  results, files = [], {}
  for name in names:
    found, written = plugins.get(name).run(context)
    results.append(found)
    files.update(written)

  decision, warnings = decision_lib.decide(
      results, percentile=options.holdout_percentile, copy_level=options.copy_level,
      margin=options.calibration_margin)
  for warning in warnings:
    logging.warning("%s", warning)
  summary = Audit(_summary(synthetic, train, holdout, results, options.k, overlap,
                           decision=decision, warnings=warnings,
                           provenance=provenance.record(options, {
                               "synthetic": synthetic, "train": train,
                               "holdout": holdout_given})
                           if jax.process_index() == 0 else None), results)
  if jax.process_index() != 0:  # every host holds the result; one writes it
    return summary
  _write(pathlib.Path(out_dir), synthetic, train, holdout, results, files, summary, options,
         extra_outputs or {})
  for item in results:
    logging.info("audit written to %s: %d of %d synthetic images memorized by %s (threshold "
                 "%.4f)", out_dir, int(item.memorized.sum()), len(synthetic), item.measure,
                 item.threshold)
  return summary


def _calibrate(train, holdout, options: AuditOptions, mesh: Mesh):
  """Each training image's best pixel correlation with the held-out images that are not copies
  of a training image; returns it, the held-out images kept, and what was left out.

  A held-out image identical to a training image (best correlation within OVERLAP_TOLERANCE of 1)
  would put the threshold at 1 and switch detection off. Such images are found by the search
  itself (their training image scores 1 against them), left out with a warning that names them,
  and the search is run again until none is left; the summary and the report say so.
  """
  kept = np.arange(len(holdout))
  left_out: list[int] = []
  while True:
    subset = holdout if len(kept) == len(holdout) else sources_lib.IndexedSource(holdout, kept)
    calibration = search_lib.search(
        train, subset, 1, block_size=options.block_size, mesh=mesh,
        precision=options.precision, progress=options.progress,
        memory_bytes=options.memory_bytes,
        description="training vs holdout", names=("training", "holdout"))
    best = calibration.values[:, 0]
    copies = np.isfinite(best) & (best >= 1 - OVERLAP_TOLERANCE)
    if not copies.any():
      break
    duplicates = np.unique(calibration.indices[copies, 0])
    left_out.extend(int(kept[i]) for i in duplicates)
    kept = np.delete(kept, duplicates)
    if not kept.size:
      raise ValueError(f"every image of the holdout set {holdout.description} is identical to a "
                       f"training image of {train.description}: the holdout set must hold real "
                       "images of other patients, never trained on")
  overlap = None
  if left_out:
    left_out.sort()
    ids = [holdout.image_id(i) for i in left_out]
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    logging.warning(
        "%d of %d holdout images are identical to training images and are left out of the "
        "threshold's calibration: %s. A holdout set must hold other patients' images; check how "
        "it was split from %s", len(left_out), len(holdout), shown, train.description)
    overlap = {"count": len(left_out), "ids": ids[:_MAX_IDS_LISTED],
               "kept": int(kept.size)}
    holdout = sources_lib.IndexedSource(holdout, kept)
  return calibration.values[:, 0], holdout, overlap


def _write(out_dir: pathlib.Path, synthetic, train, holdout, results, files, summary,
           options: AuditOptions, extra_outputs: dict[str, str]) -> None:
  """Every output into a generation folder, made `out_dir`'s results by one atomic swap."""
  with outputs.Staging(out_dir, marker="summary.json", owned=AUDIT_FILES) as staging:
    folder = staging.path
    with outputs.writing(out_dir / "matches.csv", 40 * len(synthetic) * options.k):
      _write_matches(folder / "matches.csv", synthetic, train, results)
    arrays = {}
    for item in results:
      arrays.update(item.arrays())
    with outputs.writing(out_dir / "correlations.npz",
                         sum(np.asarray(a).nbytes for a in arrays.values())):
      np.savez(folder / "correlations.npz", **arrays)
    for name, vectors in files.items():  # a detector's own arrays (embeddings.npz)
      with outputs.writing(out_dir / name, sum(v.nbytes for v in vectors.values())):
        np.savez(folder / name, **vectors)
    with outputs.writing(out_dir / "report.html"):
      report_lib.write_audit_report(
          folder, synthetic=synthetic, train=train, results=results,
          summary=_report_summary(summary), num_pairs=options.num_pairs,
          redact_training_images=options.redact_training_images, holdout=holdout,
          key_dir=out_dir)
    for name, text in extra_outputs.items():
      with outputs.writing(out_dir / name, len(text)):
        (folder / name).write_text(text)
    with outputs.writing(out_dir / "summary.json"):
      (folder / "summary.json").write_text(json.dumps(dict(summary), indent=2) + "\n")
    staging.commit()


def _report_summary(summary: dict[str, Any]) -> dict[str, Any]:
  """The summary for the report's table: the first detector's figures are not repeated."""
  shown = {key: value for key, value in summary.items() if key != "detectors"}
  for name in list(summary["detectors"])[1:]:
    shown[name] = summary["detectors"][name]
  return shown


def _write_matches(path, synthetic, train, found):
  """k rows per synthetic image; `memorized` is filled on the rank-1 rows only."""
  header = ["synthetic", "rank"]
  for item in found:
    header += [item.prefix + column for column in ("train", "correlation", "memorized")]
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


def detector_summary(item: AuditResult, synthetic, train) -> dict[str, Any]:
  """One detector's figures, as summary.json holds them under "detectors"."""
  max_correlation = item.max_correlation
  defined = int(np.isfinite(max_correlation).sum())
  summary = {
      "measure": plugins.get(item.measure).measure,
      "threshold": {"value": item.threshold, "rule": item.threshold_kind,
                    "description": item.threshold_rule},
      "num_synthetic_with_correlation": defined,
      "num_memorized": int(item.memorized.sum()),
      "fraction_memorized": (float(item.memorized.sum()) / defined) if defined else None,
      "fraction_above": {f"{t:.2f}": detectors.fraction_above(max_correlation, t)
                         for t in detectors.FIXED_THRESHOLDS},
      "max_correlation_quantiles": _quantiles(max_correlation),
      "holdout_max_correlation_quantiles": (
          _quantiles(item.holdout_max_correlation)
          if item.holdout_max_correlation is not None else None),
      "zero_variance": {"synthetic": _ids(synthetic, item.zero_variance_synthetic),
                        "train": _ids(train, item.zero_variance_train)},
      "search": {"seconds": item.seconds, "precision": item.precision,
                 "devices": item.num_devices},
  }
  if item.encoder is not None:
    summary["encoder"] = item.encoder
  return summary


def _summary(synthetic, train, holdout, found, k, overlap=None, *, decision=None, warnings=(),
             provenance=None) -> dict[str, Any]:
  per_detector = {item.measure: detector_summary(item, synthetic, train) for item in found}
  summary = {
      "memjax_version": memjax.__version__,
      "decision": decision,
      "warnings": list(warnings),
      "detector": ",".join(item.measure for item in found),
      "synthetic": _describe(synthetic),
      "train": _describe(train),
      "holdout": _describe(holdout),
      "k": k,
      **per_detector[found[0].measure],
      "detectors": per_detector,
  }
  if overlap is not None:
    # Held-out images identical to training images, left out of the calibration (`_calibrate`).
    summary["holdout"]["left_out_identical_to_training"] = overlap
  if provenance is not None:
    summary["provenance"] = provenance
  if len(found) == 2:
    first, second = found[0].memorized, found[1].memorized
    summary["agreement"] = {
        "memorized_by_both": int(np.sum(first & second)),
        f"memorized_by_{found[0].measure}_only": int(np.sum(first & ~second)),
        f"memorized_by_{found[1].measure}_only": int(np.sum(~first & second)),
        "memorized_by_either": int(np.sum(first | second)),
        "same_best_match": int(np.sum((found[0].indices[:, 0] == found[1].indices[:, 0])
                                      & (found[0].indices[:, 0] >= 0))),
    }
  return json_safe(summary)


def json_safe(value):
  """NaN and numpy scalars as JSON: NaN becomes null."""
  if isinstance(value, dict):
    return {key: json_safe(v) for key, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if not np.isfinite(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


# The audit's images: (key in config.audit, deprecated top-level key, what it holds).
AUDIT_INPUTS = (("synthetic_images", "synthetic", "the synthetic images"),
                ("training_images", "train", "the training images"),
                ("holdout_images", "holdout", "held-out real images"))


def audit_inputs(config: Any) -> dict[str, str | None]:
  """config.audit.{synthetic,training,holdout}_images, read from their old top-level names
  (config.synthetic, config.train, config.holdout) with a one-line deprecation warning."""
  found = {}
  for key, old, _ in AUDIT_INPUTS:
    value = config.audit.get(key) or None
    if config.get(old):
      logging.warning("--config.%s is deprecated: use --config.audit.%s", old, key)
      if value and value != config[old]:
        raise ValueError(f"--config.{old}={config[old]} and --config.audit.{key}={value} "
                         "disagree; give only --config.audit." + key)
      value = config[old]
    found[key] = value
  return found
