"""The demo's page: the audits of several generators of the same training set, compared.

The page follows the seed paper's comparison (Akbar, Wang & Eklund, 2025): the distributions of
each generator's highest correlations and of the held-out real images' on one axis, a table of
the figures that decide, and for each generator its closest pairs, the pairs at the threshold,
its flagged samples and a grid of its samples. Redaction follows redaction.py, as on the audit
page.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from memjax.memorization.report import figures
from memjax.memorization.report import planes
from memjax.memorization.report import redaction as redaction_lib
from memjax.memorization.report import render
from memjax.memorization.report import sections
from memjax.memorization.report import text
from memjax.memorization.report.audit_page import EMBEDDING_METHOD
from memjax.memorization.report.audit_page import PIXEL_METHOD
from memjax.memorization.result import AuditResult

GRID_IMAGES = 32
_COLUMNS = (
    ("samples", "num_samples", "{:d}"),
    ("training images", "num_training_images", "{:d}"),
    ("training steps", "training_steps", "{:d}"),
    ("training time (s)", "training_seconds", "{:.0f}"),
    ("threshold", "threshold", "{:.4f}"),
    ("memorized", "fraction_memorized", "{:.1%}"),
    ("median max r", "median_max_correlation", "{:.4f}"),
    ("r ≥ 0.90", "fraction_above_0.90", "{:.1%}"),
    ("r ≥ 0.95", "fraction_above_0.95", "{:.1%}"),
    ("r ≥ 0.99", "fraction_above_0.99", "{:.1%}"),
)


@dataclasses.dataclass
class ModelAudit:
  """One generator's audit, as the page needs it.

  Attributes:
    name: e.g. "ddpm".
    synthetic: the audited images (an ImageSource).
    result: its pixel-correlation audit (memjax.memorization.result.AuditResult).
    figures: the row of the table: fraction_memorized, threshold, median_max_correlation, ...
  """
  name: str
  synthetic: Any
  result: AuditResult
  figures: Mapping[str, Any]

  @property
  def max_correlation(self) -> np.ndarray:
    return self.result.max_correlation

  @property
  def best_index(self) -> np.ndarray:
    return self.result.best_index


def _cell(value: Any, fmt: str) -> str:
  if value is None:
    return "n/a"
  try:
    return fmt.format(int(value) if "d" in fmt else float(value))
  except (TypeError, ValueError):
    return str(value)


def comparison_series(models: Sequence[ModelAudit], holdout_max_correlation: np.ndarray | None
                      ) -> list[figures.Series]:
  """Each generator's highest correlations, after the holdout's."""
  series = [] if holdout_max_correlation is None else [
      figures.holdout_series(holdout_max_correlation)]
  return series + [figures.synthetic_series(
      m.max_correlation, m.name, figures.SERIES_COLORS[n % len(figures.SERIES_COLORS)])
                   for n, m in enumerate(models)]


def _verdict(model: ModelAudit, threshold: float) -> str:
  share = model.figures.get("fraction_memorized")
  memorized = int(np.sum(np.asarray(model.max_correlation) >= threshold))
  return (f"{model.name}: {memorized} of {len(model.max_correlation)} samples "
          f"({_cell(share, '{:.1%}')}) reach the threshold {threshold:.4f} and are counted as "
          "memorized.")


def _introduction(threshold_rule: str) -> str:
  return ("Each generator was trained on the training slices, sampled, and each sample compared "
          "with every training slice by Pearson correlation over all pixels and channels; the "
          "highest value is that sample's score. The threshold is calibrated on real data: "
          + threshold_rule.rstrip(".") + ". A sample at or above it is closer to a training "
          "slice than real images of the held-out set are to the training slices, and is "
          "counted as memorized.")


def write_comparison_report(path: str | pathlib.Path, *, models: Sequence[ModelAudit], train,
                            threshold: float, threshold_rule: str,
                            holdout_max_correlation: np.ndarray | None,
                            settings: Mapping[str, Any], num_pairs: int = 4,
                            redact: bool = False,
                            title: str = "memjax demo: did the generative models copy their "
                                         "training slices?") -> pathlib.Path:
  """Writes the self-contained comparison page to `path` and returns it."""
  threshold = float(threshold)
  shown = []
  for n, m in enumerate(models):
    redaction = redaction_lib.policy(redact, [redaction_lib.Score(
        "correlation", m.max_correlation, threshold)])
    pairs = sections.detector_pairs(
        synthetic=m.synthetic, train=train, values=m.max_correlation,
        best=np.asarray(m.best_index, np.int64), threshold=threshold, measure="correlation",
        num_pairs=num_pairs, redaction=redaction)
    shown.append(dict(name=m.name, pairs=pairs, flagged_id=f"flagged-table-{n}"))
  everything = redaction_lib.policy(redact, [redaction_lib.Score(
      "correlation", np.concatenate([np.asarray(m.max_correlation, np.float64).reshape(-1)
                                     for m in models]), threshold)])
  grids = []
  if everything.shows_sample_grids:
    for m in models:
      note = planes.display_note(m.synthetic.shape)
      grids.append(dict(name=m.name, src=planes.embed_png(planes.grid_png(m.synthetic,
                                                                         GRID_IMAGES)),
                        caption=f"The first {min(GRID_IMAGES, len(m.synthetic))} of "
                                f"{len(m.synthetic)} samples, each scaled to its own grey range"
                                + (f"; {note}" if note else "") + "."))
  series = comparison_series(models, holdout_max_correlation)
  histogram = figures.figure_to_png_bytes(figures.distribution_figure(series, threshold))
  page = render.render(
      "comparison.html.j2", title=title, verdicts=[_verdict(m, threshold) for m in models],
      redaction_notice=everything.notice(), introduction=_introduction(threshold_rule),
      columns=[c for c, _, _ in _COLUMNS],
      figure_rows=[(m.name, [_cell(m.figures.get(key), fmt) for _, key, fmt in _COLUMNS])
                   for m in models],
      histogram=planes.embed_png(histogram),
      histogram_caption=text.histogram_caption(
          figures.zoom_start(series, threshold) is not None,
          "each generator's samples against the training slices and of each training slice "
          "against the held-out slices (how alike real, different images are)"),
      models=shown, threshold=threshold, grids=grids,
      settings=json.dumps(settings, indent=2, sort_keys=True, default=str),
      methods=[PIXEL_METHOD, "threshold: " + EMBEDDING_METHOD])
  return render.write_page(path, page)
