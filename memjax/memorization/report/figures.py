"""The figures of every report page: distributions of the highest correlations, the two
detectors image by image, and a pair's pixel intensities.

Figures are drawn on `matplotlib.figure.Figure` with an Agg canvas, never through pyplot, so no
global backend state is touched. Colours are Okabe-Ito: distinguishable with the common
colour-vision deficiencies, and named in the axis labels, which say what each colour correlates.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import numpy as np

from memjax.memorization.report import planes
from memjax.memorization.report import text

DPI = 110
HISTOGRAM_SIZE_IN = (11.0, 5.6)
MAX_SCATTER_POINTS = 20_000
# The zoomed panel starts at this percentile of the holdout's values (or at the threshold).
ZOOM_PERCENTILE = 1.0
SYNTHETIC_COLOR = "#0072B2"
HOLDOUT_COLOR = "#E69F00"
THRESHOLD_COLOR = "#D55E00"
EMBEDDING_COLOR = "#009E73"
SERIES_COLORS = ((SYNTHETIC_COLOR, "blue"), ("#009E73", "green"), ("#CC79A7", "pink"),
                 ("#56B4E9", "sky blue"))
_LABEL_GAP_PX = 3


@dataclasses.dataclass(frozen=True)
class Series:
  """One distribution of a histogram: its values, colour, legend label and what it correlates."""
  values: np.ndarray
  color: str
  color_name: str
  label: str
  correlates: str  # e.g. "each synthetic image vs the training images"
  reference: bool = False  # the held-out real images' distribution


def figure_to_png_bytes(fig: Figure) -> bytes:
  """Renders `fig` to PNG bytes with an Agg canvas (no pyplot, no global backend)."""
  FigureCanvasAgg(fig)  # Attaches itself as `fig.canvas`.
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor="white")
  return buffer.getvalue()


def bin_edges(data: np.ndarray, low: float, high: float, threshold: float) -> np.ndarray:
  """Equal-width bins covering [low, high] with edges at the threshold and at 1.0.

  The width is numpy's 'auto' choice kept between 10 and 100 bins over the range; an edge at the
  threshold keeps every bar wholly below or wholly at-or-above it.
  """
  auto = np.histogram_bin_edges(data, bins="auto", range=(low, high))
  width = (high - low) / int(np.clip(len(auto) - 1, 10, 100))
  if threshold < 1.0:
    width = (1.0 - threshold) / max(1, round((1.0 - threshold) / width))
  below = int(np.ceil((threshold - low) / width - 1e-9))
  above = int(np.ceil((high - threshold) / width - 1e-9))
  return threshold + width * np.arange(-below, above + 1)


def draw_density(ax, values: np.ndarray, edges: np.ndarray, color: str, label: str,
                 total: int | None = None) -> Patch:
  """A filled histogram with a solid outline: a density, or with `total` the % of `total`.

  Returns its legend handle.
  """
  weights = None if total is None else np.full(values.shape, 100.0 / max(total, 1))
  density = total is None
  for kind, alpha, width in (("stepfilled", 0.3, 0), ("step", 1.0, 1.8)):
    ax.hist(values, bins=edges, weights=weights, density=density, histtype=kind, color=color,
            alpha=alpha, linewidth=width)
  return Patch(facecolor=color, alpha=0.5, edgecolor=color, linewidth=1.8, label=label)


def _excluded_note(count: int) -> str:
  return f"; {count} with zero variance not shown" if count else ""


def holdout_series(holdout_max_correlation) -> Series:
  """The reference distribution: each training image's best correlation with held-out images."""
  holdout = np.asarray(holdout_max_correlation, np.float64).reshape(-1)
  valid = np.isfinite(holdout)
  return Series(
      holdout[valid], HOLDOUT_COLOR, "orange",
      f"training vs held-out real images, each training image's max (n = {int(valid.sum())}"
      + _excluded_note(holdout.size - int(valid.sum())) + ")",
      "each training image vs the held-out images", reference=True)


def synthetic_series(max_correlation, name: str = "synthetic",
                     color: tuple[str, str] = SERIES_COLORS[0]) -> Series:
  """One synthetic set's distribution: each image's best correlation with the training set."""
  values = np.asarray(max_correlation, np.float64).reshape(-1)
  valid = np.isfinite(values)
  what = "synthetic image" if name == "synthetic" else f"{name} sample"
  return Series(
      values[valid], color[0], color[1],
      f"{name} vs training, each {what}'s max (n = {int(valid.sum())}"
      + _excluded_note(values.size - int(valid.sum())) + ")",
      f"each {what} vs the training images")


def histogram_figure(max_correlation: np.ndarray, threshold: float,
                     holdout_max_correlation: np.ndarray | None = None, *,
                     measure: str = "correlation") -> Figure:
  """Histograms of the synthetic (and train-vs-holdout) maxima, whole and zoomed to the threshold.

  `measure` says what was correlated: "correlation" (pixels) or "embedding".
  """
  return distribution_figure(detector_series(max_correlation, holdout_max_correlation),
                             threshold, measure=measure)


def detector_series(max_correlation, holdout_max_correlation=None) -> list[Series]:
  """One detector's histogram series: the holdout's (where given), then the synthetic set's."""
  series = [] if holdout_max_correlation is None else [holdout_series(holdout_max_correlation)]
  return series + [synthetic_series(max_correlation)]


def zoom_start(series: Sequence[Series], threshold: float) -> float | None:
  """Where a panel zoomed to the threshold starts, or None where the whole range shows it well.

  The zoom runs from the holdout's 1st percentile (or, if that is far below, from 1.5 times the
  threshold's distance to 1 below it) to 1.
  """
  data = np.concatenate([s.values for s in series] + [np.zeros(0)])
  if not data.size:
    return None
  holdout = [s.values for s in series if s.reference and s.values.size]
  start = threshold - 1.5 * (1.0 - threshold)
  if holdout:
    start = max(start, float(np.percentile(holdout[0], ZOOM_PERCENTILE)))
  start = min(start, threshold) - max(0.05 * (1.0 - min(start, threshold)), 0.002)
  low = min(float(data.min()), threshold)
  return start if (1.0 - start) < 0.6 * (1.0 - low) else None


def distribution_figure(series: Sequence[Series], threshold: float, *,
                        measure: str = "correlation") -> Figure:
  """Every series on shared bins with the thresholds: the whole range, and zoomed to the
  threshold where the whole range would squeeze it into a sliver (see `zoom_start`)."""
  words = text.words(measure)
  data = np.concatenate([s.values for s in series] + [np.zeros(0)])
  fig = Figure(figsize=HISTOGRAM_SIZE_IN, dpi=DPI, layout="constrained")
  fig.suptitle(words["histogram_title"], fontsize=13)
  low_data = min(float(data.min()), threshold) if data.size else threshold
  low = low_data - max(0.03 * (1.0 - low_data), 0.005)
  high = max(1.0, float(data.max())) if data.size else 1.0
  zoom = zoom_start(series, threshold)
  if zoom is not None:
    whole, zoomed = fig.subplots(1, 2)
    panels = [(whole, low, False), (zoomed, zoom, True)]
    zoomed.set_title(f"zoomed to the threshold: {zoom:.3f} to {high:.2f}", fontsize=11)
    whole.set_title("whole range", fontsize=11)
  else:
    panels = [(fig.add_subplot(), low, False)]
  # The x label says what each colour correlates.
  label = words["axis"] + "".join(f"\n{s.color_name}: {s.correlates}"
                                  for s in series if s.values.size)
  handles = []
  for ax, start, percent in panels:
    handles = _draw_panel(ax, series, threshold, start, high, percent=percent)
    ax.set_xlabel(label, fontsize=9.5)
  fig.legend(handles=handles, loc="outside lower center", ncols=2 if zoom else 1, fontsize=9,
             frameon=False)
  FigureCanvasAgg(fig)
  fig.canvas.draw()  # Fixes the layout, so labels can be placed in pixels.
  fig.set_layout_engine("none")
  for ax, *_ in panels:
    place_line_labels(ax, threshold)
  return fig


def _draw_panel(ax, series: Sequence[Series], threshold: float, low: float, high: float, *,
                percent: bool) -> list:
  """One histogram panel over [low, high]; returns the legend handles."""
  ax.set_ylabel("% of each set" if percent else "density", fontsize=11)
  ax.tick_params(labelsize=10)
  data = np.concatenate([s.values[s.values >= low] for s in series] + [np.zeros(0)])
  edges = bin_edges(data, low, high, threshold) if data.size else np.array([low, high])
  low, high = max(low, edges[0]) if percent else min(low, edges[0]), max(high, edges[-1])
  ax.set_xlim(low, high + 0.01 * (high - low))  # Keeps a bin ending at 1.0 off the spine.
  handles = []
  for s in series:
    if s.values.size:
      handles.append(draw_density(ax, s.values, edges, s.color, s.label,
                                  total=s.values.size if percent else None))
  synthetic = np.concatenate([s.values for s in series if not s.reference]
                             + [np.zeros(0)])
  if not data.size:
    ax.text(0.5, 0.5, "No synthetic image has a defined correlation\n(all have zero variance).",
            transform=ax.transAxes, ha="center", va="center", fontsize=12)
    ax.set_yticks([])
  _, top = ax.get_ylim()
  ax.set_ylim(0.0, top * 1.12 if data.size else 1.0)
  ax.axvline(threshold, color=THRESHOLD_COLOR, linewidth=2.0, zorder=4)
  handles.append(Line2D([], [], color=THRESHOLD_COLOR, linewidth=2.0, label=(
      f"threshold {threshold:.4f}: {int(np.sum(synthetic >= threshold))} of {synthetic.size} "
      "synthetic images at or above")))
  for fixed in text.FIXED_THRESHOLDS:
    if low <= fixed <= high:
      ax.axvline(fixed, color="0.35", linestyle="--", linewidth=1.0, zorder=3)
  handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1.0,
                        label="fixed thresholds " + " / ".join(
                            f"{t:.2f}" for t in text.FIXED_THRESHOLDS)))
  return handles


def place_line_labels(ax, threshold: float) -> None:
  """Labels the threshold and fixed-threshold lines of a laid-out axis, none over another.

  Each label stands beside its line (the threshold's to its left, a fixed one to its right, or to
  its left where that side is taken); a label with no free side is left out (the legend names
  every line).
  """
  renderer = ax.figure.canvas.get_renderer()
  low, high = ax.get_xlim()
  labels = [(threshold, f"threshold {threshold:.4f}", THRESHOLD_COLOR, ("right", "left"))]
  labels += [(fixed, f"{fixed:.2f}", "0.25", ("left", "right"))
             for fixed in text.FIXED_THRESHOLDS if low <= fixed <= high]
  taken: list[tuple[float, float]] = []
  for x, words, color, sides in labels:
    for side in sides:
      offset = -_LABEL_GAP_PX if side == "right" else _LABEL_GAP_PX
      label = ax.annotate(words, xy=(x, 0.98), xycoords=ax.get_xaxis_transform(),
                          xytext=(offset, 0), textcoords="offset pixels", rotation=90, ha=side,
                          va="top", fontsize=9, color=color, zorder=5,
                          bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1.0))
      box = label.get_window_extent(renderer)
      span = (box.x0 - 1.0, box.x1 + 1.0)
      inside = ax.get_window_extent(renderer)
      if (span[0] >= inside.x0 and span[1] <= inside.x1
          and all(span[1] <= a or span[0] >= b for a, b in taken)):
        taken.append(span)
        break
      label.remove()


def agreement_figure(pixels, embeddings) -> Figure:
  """Each synthetic image's best value by the first detector against the second's (pixel against
  embedding correlation, or any two detectors' results).

  The two thresholds split the plane into four quadrants, each labelled with its count: images
  flagged by both detectors, by one only, or by neither.
  """
  x = np.asarray(pixels.max_correlation, dtype=np.float64)
  y = np.asarray(embeddings.max_correlation, dtype=np.float64)
  if x.shape != y.shape:
    raise ValueError(f"the two detections cover {x.size} and {y.size} synthetic images; "
                     "expected the same images")
  defined = np.isfinite(x) & np.isfinite(y)
  fig = Figure(figsize=(7.0, 6.2), dpi=DPI, layout="constrained")
  ax = fig.add_subplot()
  ax.set_title("The two detectors, image by image", fontsize=13)
  x_words, y_words = text.words(pixels.measure), text.words(embeddings.measure)
  ax.set_xlabel(x_words["axis"], fontsize=10)
  ax.set_ylabel(y_words["axis"], fontsize=10)
  ax.tick_params(labelsize=9)
  if not defined.any():
    ax.text(0.5, 0.5, "No synthetic image has both correlations defined.",
            transform=ax.transAxes, ha="center", va="center", fontsize=11)
    return fig
  flagged_x = x[defined] >= pixels.threshold
  flagged_y = y[defined] >= embeddings.threshold
  colors = np.where(flagged_x | flagged_y, THRESHOLD_COLOR, SYNTHETIC_COLOR)
  ax.scatter(x[defined], y[defined], s=14, alpha=0.6, linewidths=0, c=colors, zorder=2,
             rasterized=True)
  ax.axvline(pixels.threshold, color=THRESHOLD_COLOR, linewidth=1.5, zorder=1)
  ax.axhline(embeddings.threshold, color=EMBEDDING_COLOR, linewidth=1.5, zorder=1)
  for values, threshold, set_lim in ((x, pixels.threshold, ax.set_xlim),
                                     (y, embeddings.threshold, ax.set_ylim)):
    start = min(float(values[defined].min()), threshold)
    set_lim(start - 0.04 * (1.0 - start) - 0.005, 1.0 + 0.02 * (1.0 - start) + 0.005)
  quadrants = [
      (flagged_x & flagged_y, 0.98, 0.98, "right", "top", "both"),
      (~flagged_x & flagged_y, 0.02, 0.98, "left", "top", f"{y_words['name']} only"),
      (flagged_x & ~flagged_y, 0.98, 0.02, "right", "bottom", f"{x_words['name']} only"),
      (~flagged_x & ~flagged_y, 0.02, 0.02, "left", "bottom", "neither"),
  ]
  for mask, tx, ty, ha, va, name in quadrants:
    ax.text(tx, ty, f"{name}: {int(mask.sum())}", transform=ax.transAxes, ha=ha, va=va,
            fontsize=10, zorder=3,
            bbox=dict(facecolor="white", edgecolor="0.7", alpha=0.9, boxstyle="round,pad=0.25"))
  handles = [
      Line2D([], [], color=THRESHOLD_COLOR, linewidth=1.5,
             label=f"{x_words['name']} threshold {pixels.threshold:.4f}"),
      Line2D([], [], color=EMBEDDING_COLOR, linewidth=1.5,
             label=f"{y_words['name']} threshold {embeddings.threshold:.4f}")]
  excluded = int((~defined).sum())
  note = f"; {excluded} without both correlations not shown" if excluded else ""
  fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False,
             title=f"{int(defined.sum())} synthetic images{note}", title_fontsize=9)
  return fig


def _padded_range(values: np.ndarray) -> tuple[float, float]:
  low, high = planes.finite_range(values)
  pad = 0.03 * (high - low)
  return low - pad, high + pad


def intensity_scatter(ax, train_pixels: np.ndarray, synthetic_pixels: np.ndarray) -> None:
  """Synthetic vs training pixel values (at most MAX_SCATTER_POINTS), identity line and r."""
  ax.tick_params(labelsize=9)
  if train_pixels.size != synthetic_pixels.size:
    ax.text(0.5, 0.5, "images differ in size:\nno pixel scatter", transform=ax.transAxes,
            ha="center", va="center", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return
  r = planes.pearson(train_pixels, synthetic_pixels)
  x_range = _padded_range(train_pixels)
  y_range = _padded_range(synthetic_pixels)
  overlap = min(x_range[1], y_range[1]) - max(x_range[0], y_range[0])
  union = max(x_range[1], y_range[1]) - min(x_range[0], y_range[0])
  x, y = planes.sample_pixels(train_pixels, synthetic_pixels, MAX_SCATTER_POINTS)
  ax.scatter(x, y, s=2.0, alpha=0.25, linewidths=0, color=SYNTHETIC_COLOR, zorder=2,
             rasterized=True)
  if overlap >= 0.5 * union:  # Comparable intensity scales: one scale and the identity line.
    shared = (min(x_range[0], y_range[0]), max(x_range[1], y_range[1]))
    ax.plot(shared, shared, color="0.3", linestyle="--", linewidth=1.0, zorder=1)
    x_range = y_range = shared
  else:  # On one scale the cloud would collapse onto a line; say that the scales differ.
    ax.text(0.96, 0.04, "separate axis scales:\nintensity ranges differ", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=9, color="0.2", zorder=3,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.0))
  ax.set_xlim(*x_range)
  ax.set_ylim(*y_range)
  ax.set_xlabel("training pixel value", fontsize=9)
  ax.set_ylabel("synthetic pixel value", fontsize=9)
  ax.text(0.04, 0.96, "r undefined" if np.isnan(r) else f"r = {r:.4f}", transform=ax.transAxes,
          ha="left", va="top", fontsize=10, zorder=3,
          bbox=dict(facecolor="white", edgecolor="0.7", alpha=0.85, boxstyle="round,pad=0.25"))


def scatter_png(train_image: np.ndarray, synthetic_image: np.ndarray) -> bytes:
  """A small intensity scatter plot of one pair, for a page's pair row."""
  fig = Figure(figsize=(2.3, 2.3), dpi=DPI, layout="constrained")
  ax = fig.add_subplot()
  intensity_scatter(ax, train_image.ravel(), synthetic_image.ravel())
  ax.tick_params(labelsize=7)
  ax.xaxis.label.set_fontsize(8)
  ax.yaxis.label.set_fontsize(8)
  return figure_to_png_bytes(fig)


# The sweep's panels: (figure key, panel title, y axis label, as a percentage).
SWEEP_PANELS = (
    ("fraction_memorized", "memorized: r ≥ Dar's threshold", "% of samples", True),
    ("fraction_above_0.95", "near copies: r ≥ 0.95", "% of samples", True),
    ("median_max_correlation", "median best correlation", "median of the samples' best r",
     False),
)
# Per model: marker, its size and line style, so that a line drawn over another (equal values)
# leaves the one below it visible.
SWEEP_STYLES = (("o", 10, "-"), ("s", 6, "--"), ("^", 6, ":"), ("D", 5, "-."))
SWEEP_SIZE_IN = (11.0, 4.2)


def sweep_figure(sizes: Sequence[int], values: dict[str, dict[str, Sequence[float | None]]]
                 ) -> Figure:
  """Memorization against training-set size: one panel per measure of `SWEEP_PANELS`, one line
  per model (its colour, marker and line style), one point per size; a missing value (None)
  leaves a gap.

  `values[model][key]` holds the figure `key` of each size, in the order of `sizes`.
  """
  sizes = [int(s) for s in sizes]
  fig = Figure(figsize=SWEEP_SIZE_IN, dpi=DPI, layout="constrained")
  fig.suptitle("Memorization against the number of training images", fontsize=13)
  axes = fig.subplots(1, len(SWEEP_PANELS))
  handles = []
  for ax, (key, title, ylabel, percent) in zip(axes, SWEEP_PANELS):
    handles = []
    for n, (name, figures) in enumerate(values.items()):
      color, color_name = SERIES_COLORS[n % len(SERIES_COLORS)]
      y = np.array([np.nan if v is None else float(v) for v in figures[key]], np.float64)
      y = 100.0 * y if percent else y
      marker, size, style = SWEEP_STYLES[n % len(SWEEP_STYLES)]
      handles += ax.plot(sizes, y, color=color, marker=marker, markersize=size, linestyle=style,
                         linewidth=2.0, label=f"{name} ({color_name})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlim(sizes[0] / 1.25, sizes[-1] * 1.25)
    if percent:
      _, top = ax.get_ylim()
      ax.set_ylim(-3.0, max(10.0, min(103.0, top * 1.1)))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("training images", fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.tick_params(labelsize=9.5)
    ax.grid(True, color="0.88", linewidth=0.8)
  fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=10,
             frameon=False)
  return fig
