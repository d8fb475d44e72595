"""One page that compares the audits of several generators of the same training set (the demo's).

The page follows the seed paper's comparison (Akbar, Wang & Eklund, 2025): the distributions of
each generator's highest correlations and of the held-out real images' on one axis, a table of
the figures that decide, and for each generator its closest pairs beside the training slice's
neighbours with the intensity scatter plot, and a grid of its samples. Image panels are embedded
at their own resolution (scaled up in the browser without smoothing), so that a reader sees the
pixels that were compared.

With `redact=True` no training pixels reach the page: training panels and scatter plots become
their ids, synthetic images at or above `min(threshold, 0.90)` (near copies, i.e. training
pixels) are withheld, and sample grids are left out.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import pathlib
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np

import memjax
from memjax.memorization import report as report_lib

# Okabe-Ito colours, one per generator, then the holdout's.
_MODEL_COLORS = ("#0072B2", "#009E73", "#CC79A7", "#56B4E9")
_HOLDOUT_COLOR = "#E69F00"
_THRESHOLD_COLOR = "#D55E00"
WITHHOLD_LEVEL = 0.90  # Redacted pages withhold synthetic images this close to a training image.
GRID_IMAGES = 32


@dataclasses.dataclass
class ModelAudit:
  """One generator's audit, as the page needs it.

  Attributes:
    name: e.g. "ddpm".
    synthetic: the audited images (an ImageSource).
    max_correlation: (N,) each synthetic image's highest correlation with the training set.
    best_index: (N,) its best training match.
    figures: the row of the table: fraction_memorized, threshold, median_max_correlation, ...
  """
  name: str
  synthetic: Any
  max_correlation: np.ndarray
  best_index: np.ndarray
  figures: Mapping[str, Any]


def _png(plane: np.ndarray) -> bytes:
  """A 2D plane as an 8-bit grey PNG, min-max scaled (a constant plane is mid grey)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  plane = np.asarray(plane, np.float64)
  low, high = np.nanmin(plane), np.nanmax(plane)
  scaled = (plane - low) / (high - low) if high > low else np.full_like(plane, 0.5)
  buffer = io.BytesIO()
  Image.fromarray(np.rint(scaled * 255).astype(np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def _img(png: bytes, alt: str, css_class: str = "pixels") -> str:
  return (f'<img class="{css_class}" src="{report_lib.embed_png(png)}" '
          f'alt="{html.escape(alt)}">')


def _panel(content: str, caption: str) -> str:
  return (f'<figure class="panel">{content}<figcaption>{html.escape(caption)}</figcaption>'
          "</figure>")


def _withheld(text: str) -> str:
  return f'<div class="withheld">{html.escape(text)}</div>'


def comparison_histogram(models: Sequence[ModelAudit], threshold: float,
                         holdout_max_correlation: np.ndarray | None) -> Figure:
  """Each generator's highest correlations and the holdout's, as densities on shared bins."""
  fig = Figure(figsize=(8.5, 5.2), dpi=report_lib.DPI, layout="constrained")
  ax = fig.add_subplot()
  ax.set_title("The highest correlation coefficient", fontsize=13)
  ax.set_xlabel("maximum Pearson correlation with the training set", fontsize=11)
  ax.set_ylabel("density", fontsize=11)
  series = [(m.name, np.asarray(m.max_correlation, np.float64), _MODEL_COLORS[i % 4])
            for i, m in enumerate(models)]
  if holdout_max_correlation is not None:
    series.append(("held-out real images (each training image's max with the holdout set)",
                   np.asarray(holdout_max_correlation, np.float64), _HOLDOUT_COLOR))
  values = [v[np.isfinite(v)] for _, v, _ in series]
  data = np.concatenate(values) if values else np.zeros(0)
  low = min(float(data.min()) if data.size else threshold, threshold)
  low -= max(0.03 * (1.0 - low), 0.005)
  edges = (report_lib.bin_edges(data, low, 1.0, threshold) if data.size
           else np.array([low, 1.0]))
  handles = []
  for (name, _, color), valid in zip(series, values):
    if valid.size:
      label = name if "held-out" in name else f"{name} samples vs training"
      handles.append(report_lib.draw_density(
          ax, valid, edges, color, f"{label} (n = {valid.size})"))
  ax.set_xlim(edges[0], edges[-1] + 0.01 * (edges[-1] - edges[0]))
  ax.axvline(threshold, color=_THRESHOLD_COLOR, linewidth=2.0, zorder=4)
  handles.append(Line2D([], [], color=_THRESHOLD_COLOR, linewidth=2.0,
                        label=f"threshold {threshold:.4f} (at or above: memorized)"))
  for fixed in report_lib.FIXED_THRESHOLDS:
    if edges[0] <= fixed <= edges[-1]:
      ax.axvline(fixed, color="0.35", linestyle="--", linewidth=1.0, zorder=3)
  handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1.0,
                        label="fixed thresholds 0.90 / 0.95 / 0.99"))
  fig.legend(handles=handles, loc="outside lower center", ncols=1, fontsize=9, frameon=False)
  return fig


def _scatter_png(train_image: np.ndarray, synthetic_image: np.ndarray) -> bytes:
  fig = Figure(figsize=(2.2, 2.2), dpi=report_lib.DPI, layout="constrained")
  ax = fig.add_subplot()
  report_lib.intensity_scatter(ax, train_image.ravel(), synthetic_image.ravel())
  ax.tick_params(labelsize=7)
  ax.xaxis.label.set_fontsize(8)
  ax.yaxis.label.set_fontsize(8)
  return report_lib.figure_to_png_bytes(fig)


def _read(source, i: int) -> np.ndarray:
  return np.asarray(source.read(int(i), int(i) + 1), np.float32)[0]


def _pair_rows(model: ModelAudit, train, threshold: float, num_pairs: int, redact: bool
               ) -> list[str]:
  """The closest pairs of one generator as rows of panels."""
  esc = html.escape
  withhold = min(threshold, WITHHOLD_LEVEL)
  rows = []
  for rank, i in enumerate(report_lib.top_pairs(model.max_correlation, num_pairs), start=1):
    j = int(model.best_index[i])
    r = float(model.max_correlation[i])
    memorized = r >= threshold
    synthetic_id, train_id = model.synthetic.image_id(int(i)), train.image_id(j)
    synthetic_image = _read(model.synthetic, i)
    previous_j, next_j = train.neighbors(j)
    panels = []
    match = None if redact else _read(train, j)
    for name, k in (("previous training slice", previous_j), ("training match", j),
                    ("synthetic", None), ("next training slice", next_j)):
      if name == "synthetic":
        if redact and r >= withhold:
          content = _withheld(f"withheld: r ≥ {withhold:.2f} with a training image")
        else:
          content = _img(_png(report_lib.display_plane(synthetic_image)), name)
        panels.append(_panel(content, f"synthetic {synthetic_id}"))
      elif k is None:
        panels.append(_panel(_withheld("no neighbour"), name))
      elif redact:
        panels.append(_panel(_withheld(f"{train.image_id(k)} (training image redacted)"), name))
      else:
        image = match if k == j else _read(train, k)
        caption = f"{name} {train.image_id(k)}"
        if k != j:
          caption += f"; r with match {report_lib.pearson(image.ravel(), match.ravel()):.4f}"
        panels.append(_panel(_img(_png(report_lib.display_plane(image)), name), caption))
    if redact:
      panels.append(_panel(_withheld("hidden: it would reveal training intensities"),
                           "pixel intensities"))
    else:
      panels.append(_panel(_img(_scatter_png(match, synthetic_image), "intensity scatter",
                                "figure"), "pixel intensities, training vs synthetic"))
    verdict = ('<span class="memorized">MEMORIZED</span>' if memorized else "below threshold")
    rows.append(f'<div class="pair"><p>#{rank}: synthetic <code>{esc(synthetic_id)}</code> and '
                f"training <code>{esc(train_id)}</code>, r = {r:.4f}, {verdict}</p>"
                f'<div class="panels">{"".join(panels)}</div></div>')
  return rows


def _note(shape) -> str:
  note = report_lib.display_note(shape)
  return f"; {note}" if note else ""


def _grid_png(source, count: int) -> bytes:
  """The first `count` images of `source` as one grey grid, each min-max scaled."""
  count = min(count, len(source))
  planes = [report_lib.display_plane(_read(source, i)) for i in range(count)]
  h, w = planes[0].shape
  cols = int(np.ceil(np.sqrt(count)))
  rows = int(np.ceil(count / cols))
  gap = 2
  grid = np.ones((rows * (h + gap) + gap, cols * (w + gap) + gap))
  for n, plane in enumerate(planes):
    plane = np.asarray(plane, np.float64)
    low, high = plane.min(), plane.max()
    scaled = (plane - low) / (high - low) if high > low else np.full_like(plane, 0.5)
    r, c = divmod(n, cols)
    grid[gap + r * (h + gap):gap + r * (h + gap) + h,
         gap + c * (w + gap):gap + c * (w + gap) + w] = scaled
  return _png(grid)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem;
       margin: 2rem auto; padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.pixels { width: 128px; height: 128px; image-rendering: pixelated; display: block; }
img.grid { width: min(100%, 640px); image-rendering: pixelated; }
img.figure { display: block; } img.histogram { max-width: 100%; }
.panels { display: flex; flex-wrap: wrap; gap: 0.8rem; align-items: flex-start; }
figure.panel { margin: 0; width: 10.5rem; font-size: 0.8rem; }
figure.panel:last-child { width: auto; }
.withheld { width: 128px; height: 128px; background: #9a9a9a; color: black; font-size: 0.75rem;
            display: flex; align-items: center; justify-content: center; text-align: center;
            padding: 0.3rem; box-sizing: border-box; }
.pair { margin: 1.2rem 0; } .pair p { margin: 0.3rem 0; font-weight: 600; }
.memorized { color: #B23A00; }
.verdict { font-size: 1.05rem; padding: 0.8rem 1rem; border-left: 5px solid #D55E00;
           background: #fff4ec; }
.note { padding: 0.6rem 1rem; background: #f1f4f8; border-left: 5px solid #0072B2; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
footer { margin-top: 3rem; font-size: 0.85rem; color: #666; }
"""

_TABLE_COLUMNS = (
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


def _cell(value: Any, fmt: str) -> str:
  if value is None:
    return "n/a"
  try:
    return fmt.format(int(value) if "d" in fmt else float(value))
  except (TypeError, ValueError):
    return html.escape(str(value))


def write_comparison_report(path: str | pathlib.Path, *, models: Sequence[ModelAudit], train,
                            threshold: float, threshold_rule: str,
                            holdout_max_correlation: np.ndarray | None,
                            settings: Mapping[str, Any], num_pairs: int = 4,
                            redact: bool = False,
                            title: str = "memjax demo: did the generative models copy their "
                                         "training slices?") -> pathlib.Path:
  """Writes the self-contained comparison page to `path` and returns it."""
  esc = html.escape
  threshold = float(threshold)
  parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>{esc(title)}</h1>"]
  sentences = []
  for m in models:
    share = m.figures.get("fraction_memorized")
    count = len(m.max_correlation)
    memorized = int(np.sum(np.asarray(m.max_correlation) >= threshold))
    sentences.append(f"{m.name}: {memorized} of {count} samples ({_cell(share, '{:.1%}')}) reach "
                     f"the threshold {threshold:.4f} and are counted as memorized.")
  parts.append('<p class="verdict">' + "<br>".join(esc(s) for s in sentences) + "</p>")
  if redact:
    parts.append('<p class="note">Redacted: no training pixels appear on this page. Training '
                 "images are named by their ids, scatter plots are hidden, synthetic images "
                 f"that correlate at {min(threshold, WITHHOLD_LEVEL):.2f} or more with a "
                 "training image are withheld, and sample grids are left out.</p>")
  parts.append("<p>" + esc(
      "Each generator was trained on the training slices, sampled, and each sample compared with "
      "every training slice by Pearson correlation over all pixels and channels; the highest "
      "value is that sample's score. The threshold is calibrated on real data: "
      + threshold_rule.rstrip(".") + ". A sample at or above it is closer to a training slice "
      "than real images of the held-out set are to the training slices, and is counted as "
      "memorized. Neighbouring slices of one brain are near copies of each other, so every "
      "pair is shown beside the matched slice's neighbours.") + "</p>")

  parts += ["<h2>The figures</h2>", "<table><thead><tr><th>generator</th>"
            + "".join(f"<th>{esc(c)}</th>" for c, _, _ in _TABLE_COLUMNS) + "</tr></thead><tbody>"]
  for m in models:
    cells = "".join(f'<td class="num">{_cell(m.figures.get(key), fmt)}</td>'
                    for _, key, fmt in _TABLE_COLUMNS)
    parts.append(f"<tr><td>{esc(m.name)}</td>{cells}</tr>")
  parts.append("</tbody></table>")

  histogram = report_lib.figure_to_png_bytes(
      comparison_histogram(models, threshold, holdout_max_correlation))
  parts += ["<h2>Distribution of the highest correlations</h2>",
            _img(histogram, "histograms of the highest correlations", "histogram"),
            "<p>" + esc("Densities on shared bins: each generator's samples against the training "
                        "slices, and each training slice against the held-out slices (how alike "
                        "real, different images are). The solid line is the threshold.")
            + "</p>"]

  for m in models:
    parts.append(f"<h2>{esc(m.name)}: the closest pairs</h2>")
    parts += _pair_rows(m, train, threshold, num_pairs, redact)
  if not redact:
    parts.append("<h2>Samples</h2>")
    for m in models:
      parts += [f"<h3>{esc(m.name)}</h3>",
                _img(_grid_png(m.synthetic, GRID_IMAGES), f"{m.name} samples", "grid"),
                f"<p>The first {min(GRID_IMAGES, len(m.synthetic))} of "
                f"{len(m.synthetic)} samples, each scaled to its own grey range"
                f"{esc(_note(m.synthetic.shape))}.</p>"]
  parts += ["<h2>Settings</h2>",
            f"<pre>{esc(json.dumps(settings, indent=2, sort_keys=True, default=str))}</pre>",
            f"<footer>Written by memjax {esc(memjax.__version__)}. Method: Akbar, Wang &amp; "
            "Eklund, “Beware of diffusion models for synthesizing medical images” (2025); "
            "threshold: Dar et al. (2023).</footer>", "</body>", "</html>", ""]
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text("\n".join(parts), encoding="utf-8")
  temporary.replace(path)
  return path
