"""The memorization audit report: a histogram, the closest pairs and one self-contained HTML page.

Readers are researchers and privacy officers deciding whether synthetic images may leave a hospital,
so every figure says what it shows: the threshold and how it was chosen, the images that have
no correlation (zero variance), which slice or channel of an image is drawn, and, on request, no
training pixels at all.

Figures are drawn on `matplotlib.figure.Figure` with an Agg canvas, never through pyplot, so no
global backend state is touched.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import pathlib
from typing import Any, Mapping, Protocol, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import numpy as np

import memjax

FIXED_THRESHOLDS = (0.90, 0.95, 0.99)
MAX_SCATTER_POINTS = 20_000
# A 3-D image shape whose last axis is at most this long is (H, W, C); a longer one is (D, H, W).
MAX_CHANNELS = 8
MAX_LISTED_IDS = 50
DPI = 110
HISTOGRAM_SIZE_IN = (8.0, 5.0)
# The pairs figure, in inches: panels are squares; a row is its title, column titles, panels and
# the labels under them.
_PANEL_IN = 1.75
_GAP_IN = 0.3
_LEFT_IN = 0.25
_SCATTER_GAP_IN = 0.85  # Room for the scatter plot's y label.
_ROW_TITLE_IN = 0.35
_COLUMN_TITLE_IN = 0.3
_LABEL_IN = 0.7
PAIRS_WIDTH_IN = 2 * _LEFT_IN + 5 * _PANEL_IN + 3 * _GAP_IN + _SCATTER_GAP_IN
PAIRS_ROW_HEIGHT_IN = _ROW_TITLE_IN + _COLUMN_TITLE_IN + _PANEL_IN + _LABEL_IN
PAIRS_HEADER_HEIGHT_IN = 0.6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
_SYNTHETIC_COLOR = "#0072B2"
_HOLDOUT_COLOR = "#E69F00"
_THRESHOLD_COLOR = "#D55E00"
_REDACTED_FACE = "#9a9a9a"
_EMPTY_FACE = "#f2f2f2"
_EMBEDDING_COLOR = "#009E73"

# What each detector measures, in the words of the figures and the page.
MEASURES = ("correlation", "embedding")
_WORDS = {
    "correlation": dict(
        name="pixel correlation",
        histogram_title="The highest correlation coefficient",
        axis="maximum Pearson correlation with the training set",
        header="most correlated with a training image",
        symbol="r",
        file_suffix="",
        explanation=(
            "For every synthetic image, its Pearson correlation with every training image was "
            "computed over all pixels (background included), and the highest value and the "
            "training image that gave it were kept. A correlation of 1.0 means the synthetic "
            "image is a pixel-exact copy of a training image up to a change of brightness and "
            "contrast; values close to 1.0 mean a near copy. Different patients' images of the "
            "same anatomy also correlate well, so the value is read against a threshold."),
        limits=(
            "Limits: the correlation compares images pixel by pixel with no shift, flip or "
            "rotation search, so a low value does not by itself prove that no patient was "
            "copied.")),
    "embedding": dict(
        name="embedding correlation",
        histogram_title="The highest correlation of embeddings",
        axis="maximum Pearson correlation of embeddings with the training set",
        header="whose embeddings are most correlated with a training image's",
        symbol="embedding r",
        file_suffix="_embedding",
        explanation=(
            "Every synthetic, training and held-out image was embedded by a self-supervised "
            "contrastive encoder trained on the training images (Dar et al. 2023), which maps an "
            "image and its shifted, flipped, slightly rotated or re-scaled versions to nearby "
            "embeddings and other images apart. For every synthetic image, the Pearson "
            "correlation of its embedding with every training image's embedding was computed "
            "(1 minus Dar et al.'s 'correlation' distance), and the highest value and the "
            "training image that gave it were kept. The value is read against a threshold "
            "calibrated in the same way as the pixel one."),
        limits=(
            "Limits: the encoder sees what its augmentations taught it to ignore; a copy "
            "changed in another way (a strong deformation, a different contrast) may embed "
            "apart, and neighbouring slices of one patient embed close together by design. The "
            "encoder is only as good as its training: check it with tools/validate_detectors.py "
            "on planted copies.")),
}


def _words(measure: str) -> dict[str, str]:
  if measure not in _WORDS:
    raise ValueError(f"unknown measure {measure!r}; expected one of {', '.join(MEASURES)}")
  return _WORDS[measure]


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detector's findings: each synthetic image's best training match and the rule.

  measure: "correlation" (pixels) or "embedding" (a contrastive encoder's embeddings).
  max_correlation: (N_synthetic,) the best correlation; NaN where undefined.
  best_index: (N_synthetic,) the training image that gave it; -1 where undefined.
  threshold, threshold_rule: images at or above the threshold are counted; how it was chosen.
  holdout_max_correlation: (N_train,) each training image's best correlation with held-out real
    images (what a calibrated threshold is the percentile of), or None.
  """
  measure: str
  max_correlation: np.ndarray
  best_index: np.ndarray
  threshold: float
  threshold_rule: str
  holdout_max_correlation: np.ndarray | None = None


class ImageSource(Protocol):
  """The random-access image set that the report reads (duck-typed)."""

  shape: tuple[int, ...]
  description: str

  def __len__(self) -> int:
    ...

  def read(self, start: int, stop: int) -> np.ndarray:
    ...

  def image_id(self, i: int) -> str:
    ...

  def neighbors(self, i: int) -> tuple[int | None, int | None]:
    ...


# ----------------------------------------------------------------------------------------------
# Helpers shared with other report pages.


def figure_to_png_bytes(fig: Figure) -> bytes:
  """Renders `fig` to PNG bytes with an Agg canvas (no pyplot, no global backend)."""
  FigureCanvasAgg(fig)  # Attaches itself as `fig.canvas`.
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor="white")
  return buffer.getvalue()


def embed_png(png_bytes: bytes) -> str:
  """Returns a `data:image/png;base64,...` URI, so that an HTML page needs no other file."""
  if not bytes(png_bytes[:8]) == PNG_SIGNATURE:
    raise ValueError(
        f"embed_png expects PNG bytes (e.g. from figure_to_png_bytes); got data starting with "
        f"{bytes(png_bytes[:8])!r}.")
  return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


# ----------------------------------------------------------------------------------------------
# Pure pieces: ordering, display planes, summary flattening.


def top_pairs(max_correlation: np.ndarray | Sequence[float], num_pairs: int) -> np.ndarray:
  """Indices of the `num_pairs` highest defined correlations, highest first.

  NaN (zero-variance images) is skipped; ties are broken by the lower synthetic index.
  """
  if num_pairs < 0:
    raise ValueError(f"num_pairs must be >= 0, got {num_pairs}.")
  values = np.asarray(max_correlation, dtype=np.float64).reshape(-1)
  valid = np.flatnonzero(np.isfinite(values))
  order = np.lexsort((valid, -values[valid]))  # The last key is the primary one.
  return valid[order[:num_pairs]].astype(np.int64)


def _layout(shape: Sequence[int]) -> tuple[bool, int]:
  """(whether the image is a volume, its number of channels or 0 without a channel axis)."""
  shape = tuple(int(s) for s in shape)
  if len(shape) == 2:
    return False, 0
  if len(shape) == 3:
    return (False, shape[-1]) if shape[-1] <= MAX_CHANNELS else (True, 0)
  if len(shape) == 4:
    return True, shape[-1]
  raise ValueError(
      f"Cannot display images of shape {shape}: expected (H, W), (H, W, C), (D, H, W) or "
      "(D, H, W, C).")


def display_note(shape: Sequence[int]) -> str:
  """Says which 2-D part of an image of this shape the figures show ("" for a plain 2-D image)."""
  is_volume, channels = _layout(shape)
  parts = []
  if is_volume:
    depth = int(shape[0])
    parts.append(f"middle slice along axis 0 (index {depth // 2} of {depth})")
  if channels > 1:  # channels of medical images are modalities (T1, T2, ...), not colours
    parts.append(f"channel 0 of {channels}")
  return ", ".join(parts)


def display_plane(image: np.ndarray) -> np.ndarray:
  """The 2-D grey view of one image: the middle slice of a volume, the first channel."""
  image = np.asarray(image, dtype=np.float32)
  is_volume, channels = _layout(image.shape)
  plane = image[image.shape[0] // 2] if is_volume else image
  if channels:
    return plane[..., 0]
  return plane


def flatten_summary(summary: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
  """(dotted key, formatted value) rows of a nested summary dict; floats to 4 decimals."""
  rows = []
  for key, value in summary.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      rows.extend(flatten_summary(value, prefix=f"{name}."))
    else:
      rows.append((name, format_value(value)))
  return rows


def format_value(value: Any) -> str:
  """A summary value as table text: floats to 4 decimals, sequences element-wise."""
  if value is None:
    return "none"
  if isinstance(value, (bool, np.bool_)):
    return "true" if value else "false"
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return "NaN" if np.isnan(value) else f"{float(value):.4f}"
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return "[" + ", ".join(format_value(v) for v in value) + "]"
  return str(value)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
  """(low, high) for min-max display scaling; a flat image gets a range that shows it mid-grey."""
  finite = values[np.isfinite(values)]
  if finite.size == 0:
    return 0.0, 1.0
  low, high = float(finite.min()), float(finite.max())
  if high <= low:
    return low - 1.0, low + 1.0
  return low, high


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two flattened images in float64; NaN when either has zero variance."""
  x = x.astype(np.float64) - x.mean(dtype=np.float64)
  y = y.astype(np.float64) - y.mean(dtype=np.float64)
  norm = np.sqrt(np.dot(x, x) * np.dot(y, y))
  return float(np.dot(x, y) / norm) if norm > 0 else float("nan")


def _padded_range(values: np.ndarray) -> tuple[float, float]:
  low, high = _finite_range(values)
  pad = 0.03 * (high - low)
  return low - pad, high + pad


def _shorten(text: str, limit: int = 40) -> str:
  """Keeps both ends of a long id (paths differ at the end, data sets at the start)."""
  if len(text) <= limit:
    return text
  head = (limit - 1) // 2
  return text[:head] + "…" + text[-(limit - 1 - head):]


def _wrap_id(text: str, width: int = 26) -> str:
  """An id on at most two lines of `width` characters, broken after a '/', '_', '-' or '.'."""
  if len(text) <= width:
    return text
  cut = max(text.rfind(sep, 0, width) for sep in "/_-.") + 1
  cut = cut if cut > width // 3 else width
  return text[:cut] + "\n" + _shorten(text[cut:], width)


def _plural(count: int, singular: str, plural: str) -> str:
  return f"{count} {singular if count == 1 else plural}"


def _read_one(source: ImageSource, i: int) -> np.ndarray:
  return np.asarray(source.read(int(i), int(i) + 1), dtype=np.float32)[0]


# ----------------------------------------------------------------------------------------------
# Figures.


def histogram_figure(max_correlation: np.ndarray, threshold: float,
                     holdout_max_correlation: np.ndarray | None = None, *,
                     measure: str = "correlation") -> Figure:
  """Density histograms of the synthetic (and train-vs-holdout) maxima, with the thresholds.

  `measure` says what was correlated: "correlation" (pixels) or "embedding".
  """
  words = _words(measure)
  synthetic = np.asarray(max_correlation, dtype=np.float64).reshape(-1)
  synthetic_valid = synthetic[np.isfinite(synthetic)]
  holdout_valid = None
  if holdout_max_correlation is not None:
    holdout = np.asarray(holdout_max_correlation, dtype=np.float64).reshape(-1)
    holdout_valid = holdout[np.isfinite(holdout)]

  fig = Figure(figsize=HISTOGRAM_SIZE_IN, dpi=DPI, layout="constrained")
  ax = fig.add_subplot()
  ax.set_title(words["histogram_title"], fontsize=13)
  ax.set_xlabel(words["axis"], fontsize=11)
  ax.set_ylabel("density", fontsize=11)
  ax.tick_params(labelsize=10)

  parts = [synthetic_valid] + ([holdout_valid] if holdout_valid is not None else [])
  data = np.concatenate(parts)
  low_data = min(float(data.min()), threshold) if data.size else threshold
  low = low_data - max(0.03 * (1.0 - low_data), 0.005)
  high = max(1.0, float(data.max())) if data.size else 1.0
  edges = bin_edges(data, low, high, threshold) if data.size else np.array([low, high])
  low, high = min(low, edges[0]), max(high, edges[-1])
  pad = 0.01 * (high - low)  # Keeps a bin ending at 1.0 off the axis spine.
  ax.set_xlim(low, high + pad)

  handles = []
  if data.size:
    if holdout_valid is not None:
      label = (f"training vs held-out real images, each training image's max "
               f"(n = {holdout_valid.size}"
               + _excluded_note(holdout.size - holdout_valid.size) + ")")
      handles.append(draw_density(ax, holdout_valid, edges, _HOLDOUT_COLOR, label))
    label = (f"synthetic vs training, each synthetic image's max (n = {synthetic_valid.size}"
             + _excluded_note(synthetic.size - synthetic_valid.size) + ")")
    handles.append(draw_density(ax, synthetic_valid, edges, _SYNTHETIC_COLOR, label))
  else:
    ax.text(0.5, 0.5, "No synthetic image has a defined correlation\n(all have zero variance).",
            transform=ax.transAxes, ha="center", va="center", fontsize=12)
    ax.set_yticks([])
  _, top = ax.get_ylim()
  ax.set_ylim(0.0, top * 1.12 if data.size else 1.0)

  num_memorized = int(np.sum(synthetic_valid >= threshold))
  ax.axvline(threshold, color=_THRESHOLD_COLOR, linewidth=2.0, zorder=4)
  ax.annotate(f"threshold {threshold:.4f}", xy=(threshold, 0.98),
              xycoords=ax.get_xaxis_transform(), xytext=(-4, 0), textcoords="offset points",
              rotation=90, ha="right", va="top", fontsize=10, color=_THRESHOLD_COLOR, zorder=5,
              bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1.0))
  handles.append(Line2D([], [], color=_THRESHOLD_COLOR, linewidth=2.0,
                        label=(f"threshold {threshold:.4f}: {num_memorized} of "
                               f"{synthetic_valid.size} synthetic images at or above")))
  span = high + pad - low
  for fixed in FIXED_THRESHOLDS:
    if not low <= fixed <= high:
      continue
    ax.axvline(fixed, color="0.35", linestyle="--", linewidth=1.0, zorder=3)
    if abs(fixed - threshold) > 0.04 * span:  # Else the label would sit on the threshold's.
      ax.text(fixed, 0.98, f" {fixed:.2f}", transform=ax.get_xaxis_transform(), rotation=90,
              ha="left", va="top", fontsize=9, color="0.25", zorder=5)
  handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1.0,
                        label="fixed thresholds " + " / ".join(f"{t:.2f}" for t in
                                                                FIXED_THRESHOLDS)))
  fig.legend(handles=handles, loc="outside lower center", ncols=1, fontsize=9, frameon=False)
  return fig


def _excluded_note(count: int) -> str:
  return f"; {count} with zero variance not shown" if count else ""


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


def draw_density(ax, values: np.ndarray, edges: np.ndarray, color: str, label: str) -> Patch:
  """A semi-transparent filled density histogram with a solid outline; returns its legend handle."""
  ax.hist(values, bins=edges, density=True, histtype="stepfilled", color=color, alpha=0.3,
          linewidth=0)
  ax.hist(values, bins=edges, density=True, histtype="step", color=color, linewidth=1.8)
  return Patch(facecolor=color, alpha=0.5, edgecolor=color, linewidth=1.8, label=label)


def pairs_figure(synthetic: ImageSource, train: ImageSource, max_correlation: np.ndarray,
                 best_index: np.ndarray, threshold: float, *, num_pairs: int = 8,
                 redact_training_images: bool = False, measure: str = "correlation") -> Figure:
  """One row per closest pair: [previous slice, match, synthetic, next slice, intensity scatter].

  With `redact_training_images` no training image is read at all, so none can be drawn.
  `measure` says what `max_correlation` correlates: "correlation" (pixels) or "embedding"; the
  intensity scatter and its r are always over pixels.
  """
  words = _words(measure)
  correlation = np.asarray(max_correlation, dtype=np.float64).reshape(-1)
  chosen = top_pairs(correlation, num_pairs)
  if chosen.size == 0:
    fig = Figure(figsize=(PAIRS_WIDTH_IN, 2.0), dpi=DPI)
    if num_pairs == 0:
      message = "No pairs were requested (num_pairs = 0)."
    else:
      message = (f"No pairs to show: none of the {len(correlation)} synthetic images has a "
                 "defined correlation (all have zero variance).")
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return fig

  # An explicit layout in inches: layout engines misplace fixed-aspect image axes in row grids.
  height = PAIRS_HEADER_HEIGHT_IN + PAIRS_ROW_HEIGHT_IN * len(chosen)
  fig = Figure(figsize=(PAIRS_WIDTH_IN, height), dpi=DPI)
  header = (f"The {_plural(len(chosen), 'synthetic image', 'synthetic images')} "
            f"{words['header']}, highest first")
  notes = ["per-image min-max grey scale"]
  synthetic_note, train_note = display_note(synthetic.shape), display_note(train.shape)
  if synthetic_note == train_note:
    notes += [f"shown: {synthetic_note}"] if synthetic_note else []
  else:
    notes += [f"synthetic shown: {synthetic_note or 'whole image'}",
              f"training shown: {train_note or 'whole image'}"]
  if redact_training_images:
    notes.append("training images redacted")
  fig.text(0.5, 1.0 - 0.12 / height, header + "\n" + "; ".join(notes), ha="center", va="top",
           fontsize=11)
  for rank, i in enumerate(chosen, start=1):
    row_top = height - PAIRS_HEADER_HEIGHT_IN - (rank - 1) * PAIRS_ROW_HEIGHT_IN
    _draw_pair_row(fig, row_top, rank, synthetic, train, int(i), int(best_index[i]),
                   float(correlation[i]), threshold, redact_training_images, words["symbol"])
  return fig


def _pair_axes(fig: Figure, row_top: float) -> list[Any]:
  """The five panel axes of the row whose top edge is `row_top` inches above the figure bottom."""
  width, height = fig.get_size_inches()
  bottom = row_top - _ROW_TITLE_IN - _COLUMN_TITLE_IN - _PANEL_IN
  lefts = [_LEFT_IN + c * (_PANEL_IN + _GAP_IN) for c in range(4)]
  lefts.append(lefts[-1] + _PANEL_IN + _SCATTER_GAP_IN)
  return [fig.add_axes((left / width, bottom / height, _PANEL_IN / width, _PANEL_IN / height))
          for left in lefts]


def _draw_pair_row(fig: Figure, row_top: float, rank: int, synthetic: ImageSource,
                   train: ImageSource, i: int, j: int, correlation: float, threshold: float,
                   redact: bool, symbol: str = "r") -> None:
  """Draws the pair (synthetic i, training j) as one row whose top is `row_top` inches high."""
  width, height = fig.get_size_inches()
  synthetic_id, train_id = synthetic.image_id(i), train.image_id(j)
  memorized = correlation >= threshold
  verdict = "MEMORIZED" if memorized else "below threshold"
  fig.text(_LEFT_IN / width, (row_top - 0.08) / height,
           f"#{rank}   synthetic {_shorten(synthetic_id, 44)}   ↔   training "
           f"{_shorten(train_id, 44)}   {symbol} = {correlation:.4f}   {verdict}", fontsize=11,
           ha="left", va="top", color=_THRESHOLD_COLOR if memorized else "0.15",
           fontweight="bold" if memorized else "normal")
  axes = _pair_axes(fig, row_top)
  synthetic_image = _read_one(synthetic, i)
  synthetic_plane = display_plane(synthetic_image)
  previous_j, next_j = train.neighbors(j)
  match_image = None if redact else _read_one(train, j)

  panels = [("training: previous slice", previous_j), ("training: best match", j), None,
            ("training: next slice", next_j)]
  for ax, panel in zip(axes[:4], panels):
    if panel is None:
      _show_image(ax, synthetic_plane)
      ax.set_title("synthetic", fontsize=10)
      ax.set_xlabel(_wrap_id(synthetic_id), fontsize=9)
      continue
    name, k = panel
    ax.set_title(name, fontsize=10)
    if k is None:
      _blank_panel(ax, "no neighbour", _EMPTY_FACE, color="0.35")
    elif redact:
      _blank_panel(ax, _wrap_id(train.image_id(k), 22) + "\n\n(training image\nredacted)",
                   _REDACTED_FACE, color="black")
    else:
      image = match_image if k == j else _read_one(train, k)
      _show_image(ax, display_plane(image))
      label = _wrap_id(train.image_id(k))
      if k != j:  # How alike neighbouring slices of one patient naturally are.
        label += f"\nr with match = {pearson(image.ravel(), match_image.ravel()):.4f}"
      ax.set_xlabel(label, fontsize=9)

  scatter_ax = axes[4]
  scatter_ax.set_title("pixel intensities", fontsize=10)
  if redact:
    _blank_panel(scatter_ax, "scatter plot hidden:\nit would reveal\ntraining intensities",
                 _EMPTY_FACE, color="0.2")
  else:
    intensity_scatter(scatter_ax, match_image.ravel(), synthetic_image.ravel())


def _show_image(ax, plane: np.ndarray) -> None:
  if plane.ndim == 3:
    ax.imshow(plane, interpolation="nearest")
  else:
    low, high = _finite_range(plane)
    ax.imshow(plane, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def _blank_panel(ax, text: str, face: str, color: str) -> None:
  ax.set_facecolor(face)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
          color=color)


def intensity_scatter(ax, train_pixels: np.ndarray, synthetic_pixels: np.ndarray) -> None:
  """Synthetic vs training pixel values (at most MAX_SCATTER_POINTS), identity line and r."""
  ax.tick_params(labelsize=9)
  if train_pixels.size != synthetic_pixels.size:
    ax.text(0.5, 0.5, "images differ in size:\nno pixel scatter", transform=ax.transAxes,
            ha="center", va="center", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return
  r = pearson(train_pixels, synthetic_pixels)
  x_range = _padded_range(train_pixels)
  y_range = _padded_range(synthetic_pixels)
  overlap = min(x_range[1], y_range[1]) - max(x_range[0], y_range[0])
  union = max(x_range[1], y_range[1]) - min(x_range[0], y_range[0])
  x, y = train_pixels, synthetic_pixels
  if x.size > MAX_SCATTER_POINTS:
    keep = np.random.default_rng(0).choice(x.size, MAX_SCATTER_POINTS, replace=False)
    x, y = x[keep], y[keep]
  ax.scatter(x, y, s=2.0, alpha=0.25, linewidths=0, color=_SYNTHETIC_COLOR, zorder=2,
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


# ----------------------------------------------------------------------------------------------
# The page.

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; max-width: 1100px; margin: 2rem auto; padding: 0 1rem; line-height: 1.5;
       color: #1a1a1a; background: #ffffff; }
h1 { font-size: 1.7rem; margin-bottom: 0.5rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #dddddd; }
h3 { font-size: 1.08rem; margin-top: 1.6rem; }
p, li { max-width: 70em; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.95rem; }
th, td { padding: 0.3rem 0.8rem; text-align: left; border-bottom: 1px solid #e3e3e3; }
th { background: #eceff3; }
tbody tr:nth-child(even) { background: #f5f7f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.9em; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #e3e3e3; }
figcaption { font-size: 0.92rem; color: #444444; margin-top: 0.4rem; }
.verdict { font-size: 1.1rem; padding: 0.8rem 1rem; border-left: 5px solid #D55E00;
           background: #fff4ec; }
.memorized { color: #B23A00; font-weight: 600; }
.note { padding: 0.6rem 1rem; background: #f1f4f8; border-left: 5px solid #0072B2; }
footer { margin-top: 3rem; font-size: 0.85rem; color: #666666; }
"""


def agreement_figure(pixels: Detection, embeddings: Detection) -> Figure:
  """Each synthetic image's best pixel correlation against its best embedding correlation.

  The two thresholds split the plane into four quadrants, each labelled with its count: images
  flagged by both detectors, by one only (the embedding finds shifted or flipped copies that
  pixels miss; pixels find copies the encoder was not taught), or by neither.
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
  ax.set_xlabel(_words("correlation")["axis"], fontsize=10)
  ax.set_ylabel(_words("embedding")["axis"], fontsize=10)
  ax.tick_params(labelsize=9)
  if not defined.any():
    ax.text(0.5, 0.5, "No synthetic image has both correlations defined.",
            transform=ax.transAxes, ha="center", va="center", fontsize=11)
    return fig
  flagged_x = x[defined] >= pixels.threshold
  flagged_y = y[defined] >= embeddings.threshold
  colors = np.where(flagged_x | flagged_y, _THRESHOLD_COLOR, _SYNTHETIC_COLOR)
  ax.scatter(x[defined], y[defined], s=14, alpha=0.6, linewidths=0, c=colors, zorder=2,
             rasterized=True)
  ax.axvline(pixels.threshold, color=_THRESHOLD_COLOR, linewidth=1.5, zorder=1)
  ax.axhline(embeddings.threshold, color=_EMBEDDING_COLOR, linewidth=1.5, zorder=1)
  x_low = min(float(x[defined].min()), pixels.threshold)
  y_low = min(float(y[defined].min()), embeddings.threshold)
  ax.set_xlim(x_low - 0.04 * (1.0 - x_low) - 0.005, 1.0 + 0.02 * (1.0 - x_low) + 0.005)
  ax.set_ylim(y_low - 0.04 * (1.0 - y_low) - 0.005, 1.0 + 0.02 * (1.0 - y_low) + 0.005)
  quadrants = [
      (flagged_x & flagged_y, 0.98, 0.98, "right", "top", "both"),
      (~flagged_x & flagged_y, 0.02, 0.98, "left", "top", "embedding only"),
      (flagged_x & ~flagged_y, 0.98, 0.02, "right", "bottom", "pixels only"),
      (~flagged_x & ~flagged_y, 0.02, 0.02, "left", "bottom", "neither"),
  ]
  for mask, tx, ty, ha, va, name in quadrants:
    ax.text(tx, ty, f"{name}: {int(mask.sum())}", transform=ax.transAxes, ha=ha, va=va,
            fontsize=10, zorder=3,
            bbox=dict(facecolor="white", edgecolor="0.7", alpha=0.9, boxstyle="round,pad=0.25"))
  handles = [
      Line2D([], [], color=_THRESHOLD_COLOR, linewidth=1.5,
             label=f"pixel threshold {pixels.threshold:.4f}"),
      Line2D([], [], color=_EMBEDDING_COLOR, linewidth=1.5,
             label=f"embedding threshold {embeddings.threshold:.4f}")]
  excluded = int((~defined).sum())
  note = f"; {excluded} without both correlations not shown" if excluded else ""
  fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False,
             title=f"{int(defined.sum())} synthetic images{note}", title_fontsize=9)
  return fig


def write_audit_report(out_dir: str | pathlib.Path, *, synthetic: ImageSource, train: ImageSource,
                       max_correlation: np.ndarray, best_index: np.ndarray, threshold: float,
                       threshold_rule: str, summary: Mapping[str, Any],
                       holdout_max_correlation: np.ndarray | None = None, num_pairs: int = 8,
                       redact_training_images: bool = False,
                       title: str = "memjax memorization audit", measure: str = "correlation",
                       embedding: Detection | None = None) -> dict[str, pathlib.Path]:
  """Writes histogram.png, pairs.png and a self-contained report.html into `out_dir`.

  Args:
    out_dir: folder to write into (created if missing).
    synthetic: the audited images.
    train: the training images they were searched against.
    max_correlation: (N_synthetic,) each synthetic image's maximum Pearson correlation over the
      training set; NaN for a zero-variance image.
    best_index: (N_synthetic,) index into `train` of the best match; -1 where undefined.
    threshold: images at or above it are counted as memorized.
    threshold_rule: a sentence saying how the threshold was chosen.
    summary: the caller's summary (JSON-like, may nest); shown as a table.
    holdout_max_correlation: optional (N_train,) each training image's maximum correlation with a
      held-out real set: how alike real, different patients are.
    num_pairs: how many of the closest pairs to draw.
    redact_training_images: never read or show training pixels (ids only).
    title: page title.
    measure: what `max_correlation` correlates: "correlation" (pixels) or "embedding".
    embedding: the embedding detector's findings beside pixel correlation (measure
      "correlation"); adds histogram_embedding.png, pairs_embedding.png and agreement.png.

  Returns:
    The written paths: "histogram", "pairs", "report", and with `embedding` also
    "histogram_embedding", "pairs_embedding" and "agreement".
  """
  _words(measure)
  detections = [Detection(measure, *_checked_inputs(
      synthetic, train, max_correlation, best_index, threshold, num_pairs,
      holdout_max_correlation), float(threshold), threshold_rule, holdout_max_correlation)]
  if embedding is not None:
    if measure != "correlation" or embedding.measure != "embedding":
      raise ValueError("a second detection is the embedding detector beside pixel correlation; "
                       f"got {embedding.measure!r} beside {measure!r}")
    values, best = _checked_inputs(synthetic, train, embedding.max_correlation,
                                   embedding.best_index, embedding.threshold, num_pairs,
                                   embedding.holdout_max_correlation)
    detections.append(dataclasses.replace(embedding, max_correlation=values, best_index=best,
                                          threshold=float(embedding.threshold)))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)

  pngs: dict[str, bytes] = {}
  for detection in detections:
    suffix = _file_suffix(detection, detections[0])
    pngs["histogram" + suffix] = figure_to_png_bytes(histogram_figure(
        detection.max_correlation, detection.threshold, detection.holdout_max_correlation,
        measure=detection.measure))
    pngs["pairs" + suffix] = figure_to_png_bytes(pairs_figure(
        synthetic, train, detection.max_correlation, detection.best_index, detection.threshold,
        num_pairs=num_pairs, redact_training_images=redact_training_images,
        measure=detection.measure))
  if len(detections) == 2:
    pngs["agreement"] = figure_to_png_bytes(agreement_figure(*detections))
  page = _render_page(title=title, synthetic=synthetic, train=train, detections=detections,
                      summary=summary, num_pairs=num_pairs, redact=redact_training_images,
                      pngs=pngs)

  paths = {}
  for name, png in pngs.items():
    paths[name] = out / f"{name}.png"
    paths[name].write_bytes(png)
  paths["report"] = out / "report.html"
  paths["report"].write_text(page, encoding="utf-8")
  return paths


def _checked_inputs(synthetic: ImageSource, train: ImageSource, max_correlation, best_index,
                    threshold, num_pairs, holdout_max_correlation) -> tuple[np.ndarray, np.ndarray]:
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


def _file_suffix(detection: Detection, primary: Detection) -> str:
  """How the files and tables of a detector are named: plain for the first, suffixed after."""
  return "" if detection is primary else _words(detection.measure)["file_suffix"]


def _verdict(detection: Detection, with_name: bool) -> str:
  correlation, threshold = detection.max_correlation, detection.threshold
  defined = np.isfinite(correlation)
  num_defined = int(defined.sum())
  num_memorized = int(np.sum(correlation[defined] >= threshold))
  share = f" ({100.0 * num_memorized / num_defined:.1f}%)" if num_defined else ""
  prefix = f"{_words(detection.measure)['name'].capitalize()}: " if with_name else ""
  value = "correlation" if detection.measure == "correlation" else "embedding correlation"
  return (f"{prefix}{num_memorized} of "
          f"{_plural(num_defined, 'synthetic image', 'synthetic images')}{share} with a defined "
          f"{value} reach the threshold {threshold:.4f} and are counted as memorized.")


def _detector_section(detection: Detection, *, synthetic, train, num_pairs, redact, pngs,
                      suffix: str, heading: str, file_suffix: str) -> list[str]:
  """The page's part for one detector: what was measured, its histogram, pairs and table."""
  esc = html.escape
  words = _words(detection.measure)
  correlation, best, threshold = (detection.max_correlation, detection.best_index,
                                  detection.threshold)
  rule = detection.threshold_rule.strip()
  if rule and rule[-1] not in ".!?":
    rule += "."
  parts = []
  level = "h3" if heading else "h2"  # under the detector's own heading when there are two
  if heading:
    parts.append(f"<h2>{esc(heading)}</h2>")
  parts += [f"<{level}>What was measured and how to read it{esc(suffix)}</{level}>",
            "<p>" + esc(words["explanation"] + " ") + f"Threshold {threshold:.4f}: " + esc(rule)
            + esc(" A synthetic image whose highest value is at or above the threshold is "
                  "counted as memorized; the dashed lines at 0.90, 0.95 and 0.99 are common "
                  "fixed alternatives.") + "</p>"]
  if detection.holdout_max_correlation is not None:
    parts.append("<p>" + esc(
        "The orange histogram shows, for each training image, its highest value with held-out "
        "real images of other patients: how alike real, different patients are. Synthetic "
        "images to the right of that distribution are closer to a training image than real "
        "images of other patients typically are.") + "</p>")
  parts.append("<p>" + esc(
      "Neighbouring slices of one patient's scan are naturally near copies of each other. Each "
      "pair is therefore shown beside the matched training slice's previous and next slices, with "
      "their pixel correlation with the match, as a yardstick of how alike images of the same "
      "patient are. The scatter plot shows each pixel of the synthetic image against the same "
      "pixel of its match (a fixed random sample of 20,000 pixels for larger images; r uses all "
      "pixels); points on the dashed identity line have identical values.") + "</p>")
  parts.append("<p>" + esc(words["limits"]) + "</p>")

  name = "histogram" + file_suffix
  parts += [
      f"<{level}>Distribution of the highest values{esc(suffix)}</{level}>", "<figure>",
      f'<img src="{embed_png(pngs[name])}" alt="Histogram of the synthetic images’ maximum '
      f'{esc(words["name"])} with the training set">',
      "<figcaption>" + esc(
          "Density histograms on shared bins; the solid line is the threshold, the dashed lines "
          "the fixed thresholds 0.90, 0.95 and 0.99. Zero-variance images are not shown.")
      + "</figcaption>", "</figure>"]

  chosen = top_pairs(correlation, num_pairs)
  notes = {display_note(synthetic.shape), display_note(train.shape)} - {""}
  caption = (f"Rows: the synthetic images with the highest maximum {words['name']}, highest "
             "first; ties by synthetic index. Panels: previous training slice, best training "
             "match, synthetic image, next training slice, pixel intensity scatter. Images use "
             "per-image min-max grey scaling.")
  if notes:
    caption += " Shown: " + "; ".join(sorted(notes)) + "."
  if redact:
    caption += " Training panels are replaced by their ids and the scatter plot is hidden."
  name = "pairs" + file_suffix
  table_id = "pairs-table" + file_suffix.replace("_", "-")
  parts += [
      f"<{level}>Closest pairs{esc(suffix)}</{level}>", "<figure>",
      f'<img src="{embed_png(pngs[name])}" alt="Closest synthetic-training pairs by '
      f'{esc(words["name"])}">',
      f"<figcaption>{esc(caption)}</figcaption>", "</figure>"]
  if chosen.size:
    parts.append(f'<table id="{table_id}"><thead><tr><th>rank</th><th>synthetic image</th>'
                 f"<th>training match</th><th>max {esc(words['name'])}</th><th>verdict</th></tr>"
                 "</thead><tbody>")
    for rank, i in enumerate(chosen, start=1):
      memorized = correlation[i] >= threshold
      verdict_cell = ('<span class="memorized">MEMORIZED</span>' if memorized
                      else "below threshold")
      parts.append(
          f'<tr><td class="num">{rank}</td><td><code>{esc(synthetic.image_id(int(i)))}</code></td>'
          f"<td><code>{esc(train.image_id(int(best[i])))}</code></td>"
          f'<td class="num">{correlation[i]:.4f}</td><td>{verdict_cell}</td></tr>')
    parts.append("</tbody></table>")
  return parts


def _render_page(*, title, synthetic, train, detections, summary, num_pairs, redact,
                 pngs) -> str:
  esc = html.escape
  primary = detections[0]
  undefined = np.flatnonzero(~np.isfinite(primary.max_correlation))
  zero_variance = ""
  if undefined.size:
    zero_variance = " " + _zero_variance_sentence(undefined.size, primary.measure)

  parts = [
      "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
      '<meta name="viewport" content="width=device-width, initial-scale=1">',
      f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
      f"<h1>{esc(title)}</h1>",
  ]
  both = len(detections) == 2
  for detection in detections:
    text = _verdict(detection, with_name=both)
    if detection is primary:
      text += zero_variance
    parts.append(f'<p class="verdict">{esc(text)}</p>')
  if redact:
    parts.append('<p class="note">Training images are redacted: no training pixels appear in this '
                 "report, only training image ids.</p>")

  if both:
    pixels, embeddings = detections
    parts += [
        "<h2>The two detectors together</h2>", "<p>" + esc(
            "Pixel correlation finds copies that are aligned with their training image; the "
            "embedding detector also finds copies that are shifted, flipped, slightly rotated or "
            "re-scaled. Each point is one synthetic image: its best pixel correlation against "
            "its best embedding correlation, with both thresholds. Images above either line "
            "deserve a look; the pairs of each detector follow below.") + "</p>",
        "<figure>", f'<img src="{embed_png(pngs["agreement"])}" alt="Pixel against embedding '
        'correlation per synthetic image">', "</figure>"]
  for detection in detections:
    if both:
      heading = ("Detector 1: pixel correlation" if detection is primary
                 else "Detector 2: contrastive embeddings")
      suffix = " (pixels)" if detection is primary else " (embeddings)"
    else:
      heading, suffix = "", ""
    parts += _detector_section(detection, synthetic=synthetic, train=train,
                               num_pairs=num_pairs, redact=redact, pngs=pngs, suffix=suffix,
                               file_suffix=_file_suffix(detection, primary),
                               heading=heading)

  parts.append("<h2>Summary</h2>")
  rows = flatten_summary(summary)
  if rows:
    parts.append('<table id="summary-table"><thead><tr><th>quantity</th><th>value</th></tr>'
                 "</thead><tbody>")
    parts += [f'<tr><td><code>{esc(k)}</code></td><td class="num">{esc(v)}</td></tr>'
              for k, v in rows]
    parts.append("</tbody></table>")
  else:
    parts.append("<p>No summary was given.</p>")

  parts.append("<h2>Images without a correlation</h2>")
  if undefined.size:
    listed = [synthetic.image_id(int(i)) for i in undefined[:MAX_LISTED_IDS]]
    more = undefined.size - len(listed)
    parts.append("<p>" + esc(
        f"{_zero_variance_sentence(undefined.size, primary.measure)} They are left out of the "
        "figures and of the memorized count at the top of this page.") + "</p>")
    parts.append('<ul id="zero-variance">' + "".join(f"<li><code>{esc(x)}</code></li>"
                                                    for x in listed) + "</ul>")
    if more:
      parts.append(f"<p>… and {more} more.</p>")
  else:
    parts.append("<p>None: every synthetic image has non-zero variance.</p>")

  parts += [
      "<h2>Data</h2>", "<table><thead><tr><th>set</th><th>images</th><th>image shape</th>"
      "<th>description</th></tr></thead><tbody>",
      _source_row("synthetic", synthetic), _source_row("training", train)]
  holdout = primary.holdout_max_correlation
  if holdout is not None:
    parts.append("<tr><td>held-out reference</td><td></td><td></td><td>" + esc(
        f"{np.size(holdout)} values, one per training image: its maximum "
        "correlation with a held-out set of real images") + "</td></tr>")
  methods = []
  if any(d.measure == "correlation" for d in detections):
    methods.append("Akbar, Wang &amp; Eklund, “Beware of diffusion models for synthesizing "
                   "medical images” (2025)")
  if any(d.measure == "embedding" for d in detections):
    methods.append("Dar et al., “Investigating data memorization in 3D latent diffusion models "
                   "for medical image synthesis” (2023)")
  parts += ["</tbody></table>",
            f"<footer>Written by memjax {esc(memjax.__version__)}. Method: "
            + "; ".join(methods) + ".</footer>",
            "</body>", "</html>", ""]
  return "\n".join(parts)


def _zero_variance_sentence(count: int, measure: str = "correlation") -> str:
  verb = "has" if count == 1 else "have"
  if measure == "embedding":
    return (f"{_plural(count, 'synthetic image', 'synthetic images')} {verb} a constant "
            "embedding and no correlation.")
  return (f"{_plural(count, 'synthetic image', 'synthetic images')} {verb} zero variance and no "
          "correlation.")


def _source_row(name: str, source: ImageSource) -> str:
  esc = html.escape
  shape = "(" + ", ".join(str(int(s)) for s in source.shape) + ")"
  return (f'<tr><td>{esc(name)}</td><td class="num">{len(source)}</td><td><code>{esc(shape)}'
          f"</code></td><td>{esc(str(source.description))}</td></tr>")
