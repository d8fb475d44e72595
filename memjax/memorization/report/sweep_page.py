"""The demo sweep's page: memorization against the number of training images, per generator.

The seed paper finds that diffusion models memorize more than GANs, especially on small training
sets. The sweep trains the demo's generators on nested subsets of one training set with the same
budget of images seen, so that only the number of training images changes, and this page draws
each generator's memorization against it (figures.sweep_figure), tabulates the figures of every
run, and links each run's comparison page. It shows no image, so it holds no training pixels.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

from memjax.memorization.report import comparison_page
from memjax.memorization.report import figures
from memjax.memorization.report import planes
from memjax.memorization.report import render
from memjax.memorization.report.audit_page import PIXEL_METHOD

_COLUMNS = (  # The deciding figures first: a narrow screen scrolls to the rest.
    ("memorized", "fraction_memorized", "{:.1%}"),
    ("r ≥ 0.95", "fraction_above_0.95", "{:.1%}"),
    ("median max r", "median_max_correlation", "{:.4f}"),
    ("median pairwise r", "median_pairwise_correlation", "{:.3f}"),
    ("threshold", "threshold", "{:.4f}"),
    ("images seen", "images_seen", "{:,d}"),
    ("training time (s)", "training_seconds", "{:.0f}"),
)


def _series(values: Sequence[Any], fmt: str) -> str:
  return " → ".join(comparison_page.cell(v, fmt) for v in values)


def _count(compared: Sequence[int | None], order: int) -> int:
  return sum(1 for c in compared if c == order)


def sweep_sentence(sizes: Sequence[int], models: Mapping[str, Mapping[str, Sequence[Any]]]
                   ) -> str:
  """The sweep's measured result in one sentence, from each run's figures.

  `models[name][key]` holds the figure `key` (as on the comparison page) of each size. The first
  model is compared with the second at every size, at Dar's threshold, at r >= 0.95 and by the
  median best correlation, with each model's values from the smallest set to the largest.
  """
  names = list(models)
  seen = {v for m in models.values() for v in m["images_seen"]}
  if len(sizes) == 1:
    head = f"With {sizes[0]:,d} training images"
  else:
    head = ("Across " + ", ".join(f"{s:,d}" for s in sizes[:-1])
            + f" and {sizes[-1]:,d} training images")
  if len(seen) == 1 and None not in seen:
    head += f" ({seen.pop():,d} images seen by each model at each size)"
  measures = (("fraction_memorized", "{:.1%}"), ("fraction_above_0.95", "{:.1%}"),
              ("median_max_correlation", "{:.3f}"))

  def values(key: str, fmt: str) -> str:
    return "; ".join(f"{name} {_series(models[name][key], fmt)}" for name in names)

  if len(names) < 2:
    memorized, near, median = (values(key, fmt) for key, fmt in measures)
    return (f"{head}, the share of samples memorized at Dar's threshold went {memorized}, at "
            f"r ≥ 0.95 {near}, and the median best correlation {median}.")
  a, b = names[:2]
  counts = []
  for key, _ in measures:
    compared = [comparison_page.compare(x, y)
                for x, y in zip(models[a][key], models[b][key])]
    counts.append((_count(compared, 1), _count(compared, 0), _count(compared, -1)))
  n = len(sizes)

  def tally(more: str, same: str, less: str, count: tuple[int, int, int]) -> str:
    return ", ".join(f"{what} at {k} of {n} sizes" for what, k in zip((more, same, less), count)
                     if k)

  neither = sum(1 for x, y in zip(models[a]["fraction_memorized"],
                                  models[b]["fraction_memorized"]) if x == 0 and y == 0)
  more, same, less = counts[0]
  if neither == n:
    memorized = (f"at Dar's threshold neither {a} nor {b} memorized a sample at any size "
                 f"({values(*measures[0])})")
  else:
    clauses = tally(f"more than {b}", f"as much as {b}", f"less than {b}",
                    (more, same - neither, less))
    if neither:
      clauses += f", and neither memorized a sample at {neither} of {n} sizes"
    clauses = clauses.removeprefix(", and ") or f"incomparably to {b}"
    memorized = f"at Dar's threshold {a} memorized {clauses} ({values(*measures[0])})"
  return (f"{head}: {memorized}; at r ≥ 0.95 {a} had "
          f"{tally('more samples', 'as many samples', 'fewer samples', counts[1])} "
          f"({values(*measures[1])}); and {a}'s median best correlation was "
          f"{tally('higher', 'the same', 'lower', counts[2])} ({values(*measures[2])}).")


def variety_notes(sizes: Sequence[int], models: Mapping[str, Mapping[str, Sequence[Any]]],
                  training_pairwise: Sequence[float | None]) -> list[str]:
  """One sentence per generator whose samples are more alike one another than the training
  images are (median pairwise correlation) at some size, as `comparison_page.variety_note`."""
  notes = []
  for name, values in models.items():
    alike = sum(1 for v, t in zip(values["median_pairwise_correlation"], training_pairwise)
                if comparison_page.compare(v, t) == 1)
    if alike:
      notes.append(
          f"Variety: the samples of {name} are more alike one another than the training images "
          f"are at {alike} of {len(sizes)} sizes (median pairwise r "
          f"{_series(values['median_pairwise_correlation'], '{:.3f}')}; training images "
          f"{_series(training_pairwise, '{:.3f}')}): a generator collapsed onto few images "
          "cannot copy many training images, so its low memorization figures say little about "
          "how much it would copy once trained to produce varied images.")
  return notes


def write_sweep_report(path: str | pathlib.Path, *, sizes: Sequence[int],
                       models: Mapping[str, Mapping[str, Sequence[Any]]],
                       runs: Mapping[int, str], settings: Mapping[str, Any],
                       result: str | None = None, notes: Sequence[str] = (),
                       title: str = "memjax demo sweep: memorization against the number of "
                                    "training images") -> pathlib.Path:
  """Writes the self-contained sweep page to `path` and returns it.

  `models[name][key]`: figure `key` of each size (in the order of `sizes`); `runs[size]`: the
  link (relative to the page) to that size's comparison page. `notes`: sentences shown under
  the result (`variety_notes`).
  """
  sizes = [int(s) for s in sizes]
  result = result or sweep_sentence(sizes, models)
  chart = figures.figure_to_png_bytes(figures.sweep_figure(sizes, models))
  rows = []
  for i, size in enumerate(sizes):
    for name, values in models.items():
      rows.append(dict(size=f"{size:,d}", name=name, link=runs[size],
                       cells=[comparison_page.cell(values[key][i], fmt)
                              for _, key, fmt in _COLUMNS]))
  page = render.render(
      "sweep.html.j2", title=title, result=result, notes=list(notes), sizes=sizes,
      models=list(models),
      chart=planes.embed_png(chart), columns=[c for c, _, _ in _COLUMNS], rows=rows,
      runs=[(f"{size:,d}", runs[size]) for size in sizes],
      settings=json.dumps(settings, indent=2, sort_keys=True, default=str),
      methods=[PIXEL_METHOD])
  return render.write_page(path, page)
