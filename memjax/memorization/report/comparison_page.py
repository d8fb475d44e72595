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
_COLUMNS = (  # The deciding figures first: a narrow screen scrolls to the rest.
    ("memorized", "fraction_memorized", "{:.1%}"),
    ("threshold", "threshold", "{:.4f}"),
    ("r ≥ 0.95", "fraction_above_0.95", "{:.1%}"),
    ("median max r", "median_max_correlation", "{:.4f}"),
    ("median pairwise r", "median_pairwise_correlation", "{:.3f}"),
    ("samples", "num_samples", "{:d}"),
    ("training images", "num_training_images", "{:d}"),
    ("images seen", "images_seen", "{:,d}"),
    ("r ≥ 0.90", "fraction_above_0.90", "{:.1%}"),
    ("r ≥ 0.99", "fraction_above_0.99", "{:.1%}"),
    ("training steps", "training_steps", "{:d}"),
    ("training time (s)", "training_seconds", "{:.0f}"),
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


def cell(value: Any, fmt: str) -> str:
  """A table cell: `value` formatted by `fmt` ("{:.1%}", "{:,d}", ...), "n/a" when missing."""
  if value is None:
    return "n/a"
  try:
    return fmt.format(int(value) if fmt.endswith("d}") else float(value))
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
          f"({cell(share, '{:.1%}')}) reach the threshold {threshold:.4f} and are counted as "
          "memorized.")


def compare(a: float | None, b: float | None) -> int | None:
  """1, 0 or -1 as a is more than, equal to or less than b; None when either is missing."""
  if a is None or b is None or a != a or b != b:
    return None
  return int(a > b) - int(a < b)


def _percent(value: float | None) -> str:
  return cell(value, "{:.1%}")


def result_sentence(models: Mapping[str, Mapping[str, Any]]) -> str:
  """The demo's measured result in one sentence, from each model's figures (the table's row).

  The first model is compared with the second (the demo's DDPM with its StyleGAN2): at Dar's
  threshold, at r >= 0.95 and by the median best correlation; a result that contradicts the
  paper is stated as plainly as one that agrees with it.
  """
  names = list(models)
  first = models[names[0]]
  seen = {m.get("images_seen") for m in models.values()}
  head = f"With {first['num_training_images']:,d} training images"
  if len(seen) == 1 and None not in seen:
    head += f" and {seen.pop():,d} images seen by each model"
  if len(names) < 2:
    return (f"{head}, {names[0]} memorized {_percent(first['fraction_memorized'])} of its "
            f"{first['num_samples']} samples at Dar's threshold (r ≥ {first['threshold']:.4f}), "
            f"{_percent(first.get('fraction_above_0.95'))} reached r ≥ 0.95, and their median "
            f"best correlation is {cell(first['median_max_correlation'], '{:.3f}')}.")
  a, b = names[0], names[1]
  fa, fb = models[a], models[b]
  threshold = (f"r ≥ {fa['threshold']:.4f}" if fa["threshold"] == fb["threshold"] else
               f"r ≥ {fa['threshold']:.4f} and {fb['threshold']:.4f}")
  samples = (f"{fa['num_samples']} samples each" if fa["num_samples"] == fb["num_samples"] else
             f"{fa['num_samples']} and {fb['num_samples']} samples")
  memorized = (f"{_percent(fa['fraction_memorized'])} vs {_percent(fb['fraction_memorized'])} "
               f"of {samples} at {threshold}")
  order = compare(fa["fraction_memorized"], fb["fraction_memorized"])
  if order is None:
    verdict = f"{a} and {b} cannot be compared at Dar's threshold ({memorized})"
  elif order == 0 and not fa["fraction_memorized"]:
    verdict = f"neither {a} nor {b} memorized a sample at Dar's threshold ({threshold})"
  else:
    verdict = (f"{a} memorized " + {1: "more than", 0: "as much as", -1: "less than"}[order]
               + f" {b} at Dar's threshold ({memorized})")
  near_a, near_b = fa.get("fraction_above_0.95"), fb.get("fraction_above_0.95")
  near = {1: f"more samples at r ≥ 0.95 than {b}", 0: f"as many samples at r ≥ 0.95 as {b}",
          -1: f"fewer samples at r ≥ 0.95 than {b}",
          None: f"samples at r ≥ 0.95 that cannot be compared with {b}'s"}[
              compare(near_a, near_b)]
  median_a, median_b = fa["median_max_correlation"], fb["median_max_correlation"]
  closer = {1: "closer to", 0: "as close to", -1: "farther from",
            None: "incomparably near"}[compare(median_a, median_b)]
  return (f"{head}, {verdict}; {a} had {near} ({_percent(near_a)} vs {_percent(near_b)}), and "
          f"{a}'s samples lie {closer} the training images than {b}'s (median best r "
          f"{cell(median_a, '{:.3f}')} vs {cell(median_b, '{:.3f}')}).")


def variety_note(models: Mapping[str, Mapping[str, Any]],
                 training_pairwise: float | None) -> str | None:
  """A sentence naming the generators whose samples are more alike one another than the
  training images are (median pairwise correlation), or None when there is none.

  Such a generator has collapsed onto few images: it cannot copy many training images, so its
  low memorization figures say little about how much it would copy once trained to variety.
  """
  if training_pairwise is None:
    return None
  alike = [(name, m["median_pairwise_correlation"]) for name, m in models.items()
           if compare(m.get("median_pairwise_correlation"), training_pairwise) == 1]
  if not alike:
    return None
  named = " and ".join(f"of {name} (median pairwise r {value:.3f})" for name, value in alike)
  return (f"Variety: the samples {named} are more alike one another than the training images "
          f"are ({training_pairwise:.3f}): a generator collapsed onto few images cannot copy "
          "many training images, so its low memorization figures say little about how much it "
          "would copy once trained to produce varied images.")


def training_set_text(training_set: Mapping[str, Any], num_models: int,
                      max_ids: int = 24) -> str:
  """Which images the models trained on and the audit compares with: the subset, named."""
  count, total = int(training_set["num_images"]), int(training_set["of"])
  who = "Both models" if num_models == 2 else ("The model" if num_models == 1 else
                                               "The models")
  if count == total:
    chosen = f"all {total:,d} images of {training_set['source']}"
  else:
    ids = list(training_set["ids"])
    named = ", ".join(ids[:max_ids]) + (f" and {len(ids) - max_ids} more (summary.json lists "
                                        "them all)" if len(ids) > max_ids else "")
    chosen = (f"{count:,d} of the {total:,d} images of {training_set['source']}, the subset "
              f"that data.subset_seed={training_set['subset_seed']} chooses ({named})")
  factor = int(training_set.get("audit_downsample", 1))
  block = "x".join([str(factor)] * len(str(training_set.get("audited_pixels", "")).split("x")))
  where = ("" if factor == 1 else
           f", at {training_set['audited_pixels']} pixels (means of {block} pixel "
           "blocks), the resolution the models trained at; the held-out images are compared at "
           "that resolution too")
  return (f"{who} trained on {chosen}; every sample is compared with exactly these images"
          f"{where}.")


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
                            redact: bool = False, result: str | None = None,
                            variety: str | None = None,
                            training_set: Mapping[str, Any] | None = None,
                            title: str = "memjax demo: did the generative models copy their "
                                         "training slices?") -> pathlib.Path:
  """Writes the self-contained comparison page to `path` and returns it.

  `result`: the measured result in one sentence (`result_sentence`), shown first.
  `variety`: `variety_note`'s sentence, shown after it.
  `training_set`: which images the models trained on (`training_set_text`'s argument).
  """
  threshold = float(threshold)
  shown = []
  # The transform-tolerant scores that redaction always needs, once per model.
  transformed = [redaction_lib.transformed_score(m.synthetic, train, threshold) if redact
                 else None for m in models]
  for n, m in enumerate(models):
    redaction = redaction_lib.policy(redact, [redaction_lib.Score(
        "correlation", m.max_correlation, threshold)] + ([transformed[n]] if redact else []))
    pairs = sections.detector_pairs(
        synthetic=m.synthetic, train=train, values=m.max_correlation,
        best=np.asarray(m.best_index, np.int64), threshold=threshold, measure="correlation",
        num_pairs=num_pairs, redaction=redaction)
    shown.append(dict(name=m.name, pairs=pairs, flagged_id=f"flagged-table-{n}"))
  joined = lambda values: np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values])
  everything = redaction_lib.policy(redact, [redaction_lib.Score(
      "correlation", joined(m.max_correlation for m in models), threshold)] + (
          [redaction_lib.Score(redaction_lib.TRANSFORMED, joined(t.values for t in transformed),
                               threshold)] if redact else []))
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
      result=result, variety=variety, training_set=(None if training_set is None else
                                   training_set_text(training_set, len(models))),
      redaction_notice=everything.notice(), introduction=_introduction(threshold_rule),
      columns=[c for c, _, _ in _COLUMNS],
      figure_rows=[(m.name, [cell(m.figures.get(key), fmt) for _, key, fmt in _COLUMNS])
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
