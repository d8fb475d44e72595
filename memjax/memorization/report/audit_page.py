"""The audit page: every detector that ran (memorization/plugins), with its figures.

Writes histogram.png and pairs.png for the first detector, histogram<suffix>.png and
pairs<suffix>.png for each other one (_embedding, _transformed), agreement.png with two, and
report.html, a self-contained page that embeds every image it shows.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from memjax import outputs
from memjax.memorization import plugins
from memjax.memorization.report import figures
from memjax.memorization.report import pairs_figure
from memjax.memorization.report import redaction as redaction_lib
from memjax.memorization.report import render
from memjax.memorization.report import sections
from memjax.memorization.report import text
from memjax.memorization.report.planes import display_note
from memjax.memorization.report.planes import embed_png
from memjax.memorization.result import AuditResult

MAX_LISTED_IDS = 50
PIXEL_METHOD = plugins.get("correlation").words["method"]
EMBEDDING_METHOD = plugins.get("embedding").words["method"]


def write_audit_report(out_dir: str | pathlib.Path, *, synthetic: Any, train: Any,
                       summary: Mapping[str, Any], results: Sequence[AuditResult] | None = None,
                       max_correlation: np.ndarray | None = None,
                       best_index: np.ndarray | None = None, threshold: float | None = None,
                       threshold_rule: str = "", holdout_max_correlation: np.ndarray | None = None,
                       measure: str = "correlation", num_pairs: int = 8,
                       redact_training_images: bool = False,
                       title: str = "memjax memorization audit",
                       holdout: Any = None,
                       key_dir: str | pathlib.Path | None = None) -> dict[str, pathlib.Path]:
  """Writes histogram.png, pairs.png and a self-contained report.html into `out_dir`.

  Args:
    out_dir: folder to write into (created if missing).
    synthetic, train: the audited images and the training images they were searched against
      (image sources: shape, description, len, read, image_id, neighbors).
    summary: the caller's summary (JSON-like, may nest); shown as a table.
    results: each detector's `AuditResult` (memjax.memorization.result): pixel correlation, the
      embedding detector, or pixel correlation then the embedding detector, which adds
      histogram_embedding.png, pairs_embedding.png and agreement.png.
    max_correlation, best_index, threshold, threshold_rule, holdout_max_correlation, measure:
      instead of `results`, one detector's best matches as arrays (N_synthetic,) (NaN and -1
      where undefined), its threshold and a sentence on how it was chosen, and optionally each
      training image's maximum correlation with a held-out real set.
    num_pairs: how many of the closest pairs to draw.
    redact_training_images: apply the redaction policy of redaction.py (no training pixels).
    title: page title.
    holdout: the held-out image source, for the data table.
    key_dir: where a redacted page's pseudonym key is kept (default `out_dir`;
      redaction.pseudonym_key).

  Returns:
    The written paths: "histogram", "pairs", "report", and with two detectors also
    "histogram_embedding", "pairs_embedding" and "agreement".
  """
  if results is None:
    if max_correlation is None or best_index is None or threshold is None:
      raise ValueError("give the detectors' results, or max_correlation, best_index and "
                       "threshold")
    results = [AuditResult.from_best(measure, max_correlation, best_index, threshold,
                                     threshold_rule, holdout_max_correlation)]
  results = list(results)
  for item in results:
    plugins.get(item.measure)
  if not results:
    raise ValueError("a report shows at least one detector, got none")
  if len({r.measure for r in results}) != len(results):
    raise ValueError(f"a report shows each detector once, got "
                     f"{', '.join(r.measure for r in results)}")
  detections = []
  for item in results:
    values, best = _checked_inputs(synthetic, train, item.max_correlation, item.best_index,
                                   item.threshold, num_pairs, item.holdout_max_correlation)
    detections.append(dataclasses.replace(item, values=values[:, None], indices=best[:, None],
                                          threshold=float(item.threshold)))
  scores = [redaction_lib.Score(d.measure, d.max_correlation, d.threshold) for d in detections]
  if redact_training_images and redaction_lib.TRANSFORMED not in {d.measure for d in detections}:
    pixel = [d.threshold for d in detections if d.measure == "correlation"]
    scores.append(redaction_lib.transformed_score(synthetic, train, pixel[0] if pixel else None))
  redaction = redaction_lib.policy(redact_training_images, scores)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if redact_training_images:  # no file name, path or id on the page: pseudonyms instead
    key = redaction_lib.pseudonym_key(key_dir if key_dir is not None else out)
    synthetic = redaction_lib.PseudonymSource(synthetic, key, "synthetic")
    train = redaction_lib.PseudonymSource(train, key, "training")
    if holdout is not None:
      holdout = redaction_lib.PseudonymSource(holdout, key, "holdout")
    summary = redaction_lib.without_identifiers(summary)

  pngs: dict[str, bytes] = {}
  for index, detection in enumerate(detections):
    suffix = _file_suffix(detection, index)
    pngs["histogram" + suffix] = figures.figure_to_png_bytes(figures.histogram_figure(
        detection.max_correlation, detection.threshold, detection.holdout_max_correlation,
        measure=detection.measure))
    pngs["pairs" + suffix] = figures.figure_to_png_bytes(pairs_figure.pairs_figure(
        synthetic, train, detection.max_correlation, detection.best_index, detection.threshold,
        num_pairs=num_pairs, measure=detection.measure, redaction=redaction,
        aligned=_aligned(detection)))
  if len(detections) == 2:
    pngs["agreement"] = figures.figure_to_png_bytes(figures.agreement_figure(*detections))
  page = _render_page(title=title, synthetic=synthetic, train=train, holdout=holdout,
                      detections=detections, summary=summary, num_pairs=num_pairs,
                      redaction=redaction, pngs=pngs)
  paths = {}
  for name, png in pngs.items():
    paths[name] = out / f"{name}.png"
    with outputs.writing(paths[name], len(png)):
      paths[name].write_bytes(png)
  paths["report"] = render.write_page(out / "report.html", page)
  return paths


def _checked_inputs(synthetic, train, max_correlation, best_index, threshold, num_pairs,
                    holdout_max_correlation) -> tuple[np.ndarray, np.ndarray]:
  """Validates the arrays against the sources; returns (correlation float64, best index int64)."""
  correlation = np.asarray(max_correlation, dtype=np.float64)
  if correlation.shape != (len(synthetic),):
    raise ValueError(f"max_correlation has shape {correlation.shape}; expected "
                     f"({len(synthetic)},), one value per synthetic image.")
  best = np.asarray(best_index)
  if best.shape != correlation.shape or not np.issubdtype(best.dtype, np.integer):
    raise ValueError(f"best_index must be an integer array of shape {correlation.shape}; got "
                     f"{best.dtype} of shape {best.shape}.")
  best = best.astype(np.int64)
  defined = np.isfinite(correlation)
  bad = np.flatnonzero(defined & ((best < 0) | (best >= len(train))))
  if bad.size:
    raise ValueError(
        f"best_index[{bad[0]}] = {best[bad[0]]} is not an index into the {len(train)} training "
        f"images, although max_correlation[{bad[0]}] = {correlation[bad[0]]} is defined.")
  if not np.isfinite(threshold):
    raise ValueError(f"threshold must be a finite number, got {threshold}.")
  if num_pairs < 0:
    raise ValueError(f"num_pairs must be >= 0, got {num_pairs}.")
  if holdout_max_correlation is not None and np.ndim(holdout_max_correlation) != 1:
    raise ValueError("holdout_max_correlation must be 1-D (one value per training image); got "
                     f"shape {np.shape(holdout_max_correlation)}.")
  return correlation, best


def _aligned(detection: AuditResult):
  """How the detector draws its pairs: (i, training image) -> (image as compared, transform)."""
  return functools.partial(plugins.get(detection.measure).aligned_match, detection)


def _file_suffix(detection: AuditResult, index: int) -> str:
  """How the files and tables of a detector are named: plain for the first, suffixed after."""
  return "" if index == 0 else text.words(detection.measure)["file_suffix"]


def _verdict(detection: AuditResult, with_name: bool) -> str:
  correlation, threshold = detection.max_correlation, detection.threshold
  defined = np.isfinite(correlation)
  num_defined = int(defined.sum())
  num_memorized = int(np.sum(correlation[defined] >= threshold))
  share = f" ({100.0 * num_memorized / num_defined:.1f}%)" if num_defined else ""
  name = text.words(detection.measure)["name"]
  prefix = f"{name.capitalize()}: " if with_name else ""
  value = text.words(detection.measure).get("value", name)
  return (f"{prefix}{num_memorized} of "
          f"{text.plural(num_defined, 'synthetic image', 'synthetic images')}{share} with a "
          f"defined {value} reach the threshold {threshold:.4f} and are counted as memorized.")


def _paragraphs(detection: AuditResult, pairs: sections.Pairs,
                redaction: redaction_lib.Redaction) -> list[str]:
  """What was measured, how to read it, and what the pair rows show, in this page's terms."""
  words = text.words(detection.measure)
  paragraphs = [words["explanation"] + f" Threshold {detection.threshold:.4f}: "
                + text.sentence(detection.threshold_rule)
                + " A synthetic image whose highest value is at or above the threshold is "
                "counted as memorized; the dashed lines at 0.90, 0.95 and 0.99 are common fixed "
                "alternatives."]
  if detection.holdout_max_correlation is not None:
    paragraphs.append(
        "The orange histogram shows, for each training image, its highest value with held-out "
        "real images of other patients: how alike real, different patients are. Synthetic "
        "images to the right of that distribution are closer to a training image than real "
        "images of other patients typically are.")
  if pairs.shows_neighbours:
    paragraphs.append(
        "Neighbouring slices of one patient's scan are naturally near copies of each other. Each "
        "pair is therefore shown beside the matched training slice's previous and next slices, "
        "with their pixel correlation with the match, as a yardstick of how alike images of the "
        "same patient are.")
  if redaction.shows_training:
    paragraphs.append(
        "The scatter plot shows each pixel of the synthetic image against the same pixel of its "
        "match (a fixed random sample of 20,000 pixels for larger images; r uses all pixels); "
        "points on the dashed identity line have identical values.")
  return paragraphs + [words["limits"]]


def _detector_context(detection: AuditResult, index: int, num_detectors: int, *, synthetic, train,
                      num_pairs, redaction, pngs) -> dict[str, Any]:
  several = num_detectors > 1
  file_suffix = _file_suffix(detection, index)
  name = text.words(detection.measure)["name"]
  pairs = sections.detector_pairs(
      synthetic=synthetic, train=train, values=detection.max_correlation,
      best=detection.best_index, threshold=detection.threshold, measure=detection.measure,
      num_pairs=num_pairs, redaction=redaction, aligned=_aligned(detection))
  zoomed = figures.zoom_start(figures.detector_series(
      detection.max_correlation, detection.holdout_max_correlation), detection.threshold)
  caption = text.histogram_caption(zoomed is not None)
  notes = {display_note(synthetic.shape), display_note(train.shape)} - {""}
  paragraphs = _paragraphs(detection, pairs, redaction)
  if notes:
    paragraphs.append("Images shown: " + "; ".join(sorted(notes)) + ".")
  return dict(
      heading=f"Detector {index + 1}: {name}" if several else "",
      level="h3" if several else "h2",
      suffix=f" ({name})" if several else "",
      paragraphs=paragraphs, histogram=embed_png(pngs["histogram" + file_suffix]),
      histogram_caption=caption, pairs=pairs, threshold=detection.threshold,
      table_id="pairs-table" + file_suffix.replace("_", "-"),
      flagged_id="flagged-table" + file_suffix.replace("_", "-"))


def _data_rows(synthetic, train, holdout, holdout_max) -> list[sections.SourceRow]:
  rows = [sections.source_row("synthetic", synthetic), sections.source_row("training", train)]
  calibrates = ("each training image's maximum correlation with these images calibrates the "
                "threshold")
  if holdout is not None:
    rows.append(sections.source_row("held-out reference", holdout, calibrates))
  elif holdout_max is not None:
    rows.append(sections.SourceRow(
        "held-out reference", "not given", "not given",
        f"{np.size(holdout_max)} values from an earlier audit, one per training image: its "
        "maximum correlation with a held-out set of real images"))
  return rows


def _render_page(*, title, synthetic, train, holdout, detections, summary, num_pairs,
                 redaction, pngs) -> str:
  primary = detections[0]
  both = len(detections) == 2
  undefined = np.flatnonzero(~np.isfinite(primary.max_correlation))
  verdicts = [_verdict(d, with_name=len(detections) > 1) for d in detections]
  zero_variance = None
  if undefined.size:
    constant = (len(primary.zero_variance_synthetic) if primary.zero_variance_train.size
                and primary.zero_variance_train.size >= len(train) else None)
    sentence = text.zero_variance_sentence(undefined.size, primary.measure, constant)
    verdicts[0] += " " + sentence
    listed = [synthetic.image_id(int(i)) for i in undefined[:MAX_LISTED_IDS]]
    zero_variance = dict(sentence=sentence, ids=listed, more=undefined.size - len(listed))
  left_out = ((summary.get("holdout") or {}).get("left_out_identical_to_training")
              if isinstance(summary, Mapping) else None)
  if left_out:
    total = left_out["count"] + left_out["kept"]
    verdicts.append(
        f"{left_out['count']} of {total} held-out images are identical to training images "
        f"({', '.join(left_out.get('ids', ['names withheld'])[:5])}"
        f"{' …' if left_out['count'] > 5 and left_out.get('ids') else ''}): they are "
        f"the same patients, not different ones, so the threshold was calibrated on the other "
        f"{left_out['kept']}. Check how the holdout set was split from the training set.")
  methods = list(dict.fromkeys(text.words(d.measure)["method"] for d in detections
                               if text.words(d.measure).get("method")))
  decision = summary.get("decision") if isinstance(summary, Mapping) else None
  return render.render(
      "audit.html.j2", title=title, verdicts=verdicts, redaction_notice=redaction.notice(),
      decision=decision, decision_headline=(decision["verdict"].capitalize()
                                            if decision else None),
      warnings=(summary.get("warnings") or []) if isinstance(summary, Mapping) else [],
      agreement=embed_png(pngs["agreement"]) if both else None,
      agreement_names=[text.words(d.measure)["name"] for d in detections],
      detectors=[_detector_context(d, n, len(detections), synthetic=synthetic, train=train,
                                   num_pairs=num_pairs, redaction=redaction, pngs=pngs)
                 for n, d in enumerate(detections)],
      num_pairs=num_pairs, summary_rows=text.flatten_summary(summary),
      zero_variance=zero_variance,
      data_rows=_data_rows(synthetic, train, holdout, primary.holdout_max_correlation),
      methods=methods)
