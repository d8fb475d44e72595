"""pairs.png: the closest pairs of one detector as one figure, a row per pair.

A row shows the best training match, the synthetic image and their pixel intensity scatter, and,
where the training set's slice order is known (see slices.py), the match's previous and next
slices beside it. Redaction follows redaction.py: training panels become ids, the scatter plot
is hidden, and a synthetic image at or above the policy's bar is withheld (never read).
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
import numpy as np

from memjax.memorization.report import figures
from memjax.memorization.report import planes
from memjax.memorization.report import redaction as redaction_lib
from memjax.memorization.report import slices
from memjax.memorization.report import text

# The figure, in inches: panels are squares; a row is its title, column titles, panels and the
# labels under them.
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
_REDACTED_FACE = "#9a9a9a"
_EMPTY_FACE = "#f2f2f2"


def top_pairs(max_correlation, num_pairs: int) -> np.ndarray:
  """Indices of the `num_pairs` highest defined correlations, highest first.

  NaN (zero-variance images) is skipped; ties are broken by the lower synthetic index.
  """
  if num_pairs < 0:
    raise ValueError(f"num_pairs must be >= 0, got {num_pairs}.")
  values = np.asarray(max_correlation, dtype=np.float64).reshape(-1)
  valid = np.flatnonzero(np.isfinite(values))
  order = np.lexsort((valid, -values[valid]))  # The last key is the primary one.
  return valid[order[:num_pairs]].astype(np.int64)


def pairs_figure(synthetic: Any, train: Any, max_correlation: np.ndarray,
                 best_index: np.ndarray, threshold: float, *, num_pairs: int = 8,
                 redact_training_images: bool = False, measure: str = "correlation",
                 redaction: redaction_lib.Redaction | None = None, aligned=None) -> Figure:
  """One row per closest pair: [previous slice, match, synthetic, next slice, intensity scatter].

  `measure` says what `max_correlation` correlates ("correlation": pixels, or "embedding"); the
  scatter plot and its r are always over pixels. `redaction` is the page's policy; without it
  the policy is built from this detector's values and `redact_training_images`. `aligned(i,
  training image)`: the match moved into the synthetic image's frame and the transform in words
  (the "transformed" detector), drawn and scattered so.
  """
  words = text.words(measure)
  correlation = np.asarray(max_correlation, dtype=np.float64).reshape(-1)
  if redaction is None:
    scores = [redaction_lib.Score(measure, correlation, threshold)]
    if redact_training_images:
      scores.append(redaction_lib.transformed_score(
          synthetic, train, threshold if measure == "correlation" else None))
    redaction = redaction_lib.policy(redact_training_images, scores)
  chosen = top_pairs(correlation, num_pairs)
  if chosen.size == 0:
    fig = Figure(figsize=(PAIRS_WIDTH_IN, 2.0), dpi=figures.DPI)
    if num_pairs == 0:
      message = "No pairs were requested (num_pairs = 0)."
    else:
      message = (f"No pairs to show: none of the {len(correlation)} synthetic images has a "
                 "defined correlation (all have zero variance).")
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return fig

  # An explicit layout in inches: layout engines misplace fixed-aspect image axes in row grids.
  height = PAIRS_HEADER_HEIGHT_IN + PAIRS_ROW_HEIGHT_IN * len(chosen)
  fig = Figure(figsize=(PAIRS_WIDTH_IN, height), dpi=figures.DPI)
  header = (f"The {text.plural(len(chosen), 'synthetic image', 'synthetic images')} "
            f"{words['header']}, highest first")
  notes = ["per-image min-max grey scale"]
  synthetic_note, train_note = planes.display_note(synthetic.shape), planes.display_note(
      train.shape)
  if synthetic_note == train_note:
    notes += [f"shown: {synthetic_note}"] if synthetic_note else []
  else:
    notes += [f"synthetic shown: {synthetic_note or 'whole image'}",
              f"training shown: {train_note or 'whole image'}"]
  if redaction.enabled:
    notes.append("training images redacted")
  fig.text(0.5, 1.0 - 0.12 / height, header + "\n" + "; ".join(notes), ha="center", va="top",
           fontsize=11)
  neighbors = slices.neighbor_lookup(train, best_index[chosen])
  for rank, i in enumerate(chosen, start=1):
    row_top = height - PAIRS_HEADER_HEIGHT_IN - (rank - 1) * PAIRS_ROW_HEIGHT_IN
    _draw_pair_row(fig, row_top, rank, synthetic, train, int(i), int(best_index[i]),
                   float(correlation[i]), threshold, redaction, neighbors, words["symbol"],
                   aligned)
  return fig


def _pair_axes(fig: Figure, row_top: float, num_images: int) -> list[Any]:
  """The image axes and the scatter axis of the row whose top is `row_top` inches high."""
  width, height = fig.get_size_inches()
  bottom = row_top - _ROW_TITLE_IN - _COLUMN_TITLE_IN - _PANEL_IN
  lefts = [_LEFT_IN + c * (_PANEL_IN + _GAP_IN) for c in range(num_images)]
  lefts.append(lefts[-1] + _PANEL_IN + _SCATTER_GAP_IN)
  return [fig.add_axes((left / width, bottom / height, _PANEL_IN / width, _PANEL_IN / height))
          for left in lefts]


def _draw_pair_row(fig: Figure, row_top: float, rank: int, synthetic: Any, train: Any, i: int,
                   j: int, correlation: float, threshold: float,
                   redaction: redaction_lib.Redaction, neighbors: slices.Neighbors | None,
                   symbol: str, aligned=None) -> None:
  """Draws the pair (synthetic i, training j) as one row whose top is `row_top` inches high."""
  width, height = fig.get_size_inches()
  synthetic_id = synthetic.image_id(i)
  memorized = correlation >= threshold
  fig.text(_LEFT_IN / width, (row_top - 0.08) / height,
           f"#{rank}   synthetic {text.shorten(synthetic_id, 44)}   ↔   training "
           f"{text.shorten(train.image_id(j), 44)}   {symbol} = {correlation:.4f}   "
           f"{'MEMORIZED' if memorized else 'below threshold'}", fontsize=11,
           ha="left", va="top", color=figures.THRESHOLD_COLOR if memorized else "0.15",
           fontweight="bold" if memorized else "normal")
  panels = [("training: best match", j), ("synthetic", i)]
  if neighbors is not None:
    previous_j, next_j = neighbors(j)
    panels = [("training: previous slice", previous_j), *panels, ("training: next slice", next_j)]
  axes = _pair_axes(fig, row_top, len(panels))
  # At most two full-resolution images at once (the match and one other), in their stored
  # dtype; every panel draws a downsampled float64 plane of them.
  shows_synthetic = redaction.shows_synthetic(i)
  match_image = planes.read_one(train, j) if redaction.shows_training else None
  transform, stored_match = "", match_image
  if match_image is not None and aligned is not None:
    moved, transform = aligned(i, match_image)
    match_image = moved if transform else match_image
  synthetic_ax = None
  for ax, (name, k) in zip(axes, panels):
    ax.set_title(name, fontsize=10)
    if name == "synthetic":
      synthetic_ax = ax  # drawn below, once the neighbours are no longer held
    elif k is None:
      _blank_panel(ax, "no neighbour", _EMPTY_FACE, color="0.35")
    elif k == j and transform and redaction.shows_training:
      ax.set_title("training: moved to match", fontsize=10)
      _show_image(ax, planes.display_plane(match_image))
      ax.set_xlabel(text.wrap_id(train.image_id(k)) + "\nsynthetic " + transform, fontsize=8)
    elif not redaction.shows_training:
      _blank_panel(ax, text.wrap_id(train.image_id(k), 22) + "\n\n(training image\nredacted)",
                   _REDACTED_FACE, color="black")
    else:
      image = stored_match if k == j else planes.read_one(train, k)
      _show_image(ax, planes.display_plane(image))
      label = text.wrap_id(train.image_id(k))
      if k != j:  # How alike neighbouring slices of one patient naturally are.
        label += f"\nr with match = {planes.pearson(image, stored_match):.4f}"
      ax.set_xlabel(label, fontsize=9)
      del image
  synthetic_image = planes.read_one(synthetic, i) if shows_synthetic else None
  if shows_synthetic:
    _show_image(synthetic_ax, planes.display_plane(synthetic_image))
    synthetic_ax.set_xlabel(text.wrap_id(synthetic_id), fontsize=9)
  else:
    _blank_panel(synthetic_ax, text.wrap_id(synthetic_id, 22) + "\n\n"
                 + redaction.withheld_text(i).replace(": ", ":\n").replace(" with", "\nwith"),
                 _REDACTED_FACE, "black")

  scatter_ax = axes[-1]
  scatter_ax.set_title("pixel intensities", fontsize=10)
  if match_image is None or synthetic_image is None:
    _blank_panel(scatter_ax, "scatter plot hidden:\nit would reveal\ntraining intensities",
                 _EMPTY_FACE, color="0.2")
  else:
    overlap = np.isfinite(match_image)
    figures.intensity_scatter(scatter_ax, match_image[overlap], synthetic_image[overlap])


def _show_image(ax, plane: np.ndarray) -> None:
  # The plane's own min-max grey levels (in float64: values near 1e200 draw as any others).
  ax.imshow(planes.grey_levels(plane), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def _blank_panel(ax, words: str, face: str, color: str) -> None:
  ax.set_facecolor(face)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.text(0.5, 0.5, words, transform=ax.transAxes, ha="center", va="center", fontsize=9,
          color=color)
