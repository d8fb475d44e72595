"""The parts that the pages share, as data for the templates: pair rows, the pairs at the
threshold, the table of flagged images and the data table.

A pair row holds one panel per image: the training match (and its neighbouring slices where the
slice order is known), the synthetic image and their intensity scatter plot, each embedded at its
own resolution. Every panel passes the page's redaction policy (redaction.py) first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from memjax.memorization.report import figures
from memjax.memorization.report import pairs_figure
from memjax.memorization.report import planes
from memjax.memorization.report import redaction as redaction_lib
from memjax.memorization.report import slices
from memjax.memorization.report import text

NEAR_THRESHOLD_PAIRS = 3  # Pairs shown on each side of the threshold.
MAX_FLAGGED_ROWS = 500  # Rows of the flagged table; matches.csv lists every image.


@dataclasses.dataclass(frozen=True)
class Panel:
  """One cell of a pair row: an embedded image (`src`) or a grey box saying why there is none."""
  caption: str
  src: str | None = None
  kind: str = "pixels"  # "pixels", "figure" (the scatter plot) or "withheld"
  note: str = ""


@dataclasses.dataclass(frozen=True)
class PairRow:
  rank: int
  synthetic_id: str
  train_id: str
  value: float
  memorized: bool
  symbol: str
  panels: tuple[Panel, ...]


@dataclasses.dataclass(frozen=True)
class FlaggedRow:
  synthetic_id: str
  train_id: str
  value: float
  thumbnail: str | None  # a data URI, or None where redaction withholds it
  withheld: str


@dataclasses.dataclass(frozen=True)
class Pairs:
  """One detector's pairs as a page shows them."""
  closest: list[PairRow]
  near: list[PairRow]
  flagged: list[FlaggedRow]
  num_flagged: int
  shows_neighbours: bool
  symbol: str
  name: str


def near_threshold(values: np.ndarray, threshold: float, count: int,
                   exclude: Sequence[int] = ()) -> np.ndarray:
  """The `count` images just at or above the threshold and the `count` just below it, highest
  first, leaving out `exclude` (pairs shown already)."""
  values = np.asarray(values, np.float64)
  candidates = np.setdiff1d(np.flatnonzero(np.isfinite(values)), np.asarray(exclude, np.int64))
  above = candidates[values[candidates] >= threshold]
  below = candidates[values[candidates] < threshold]
  above = above[np.lexsort((above, values[above]))][:count]
  below = below[np.lexsort((below, -values[below]))][:count]
  chosen = np.concatenate([above, below])
  return chosen[np.lexsort((chosen, -values[chosen]))].astype(np.int64)


def _image_panel(source: Any, k: int, caption: str) -> tuple[np.ndarray, Panel]:
  image = planes.read_one(source, k)
  return image, Panel(caption, planes.embed_png(planes.plane_png(planes.display_plane(image))))


def pair_row(rank: int, i: int, j: int, value: float, *, synthetic: Any, train: Any,
             threshold: float, symbol: str, redaction: redaction_lib.Redaction,
             neighbors: slices.Neighbors | None, aligned=None) -> PairRow:
  """The panels of the pair (synthetic i, training j), each passed through `redaction`.

  `aligned(i, training image)` gives the match as the detector compared it (moved into the
  synthetic image's frame; NaN where it does not reach) and the transform in words; the match
  panel and the scatter plot show it so.
  """
  synthetic_id, train_id = synthetic.image_id(i), train.image_id(j)
  # At most two full-resolution images at once: the match, then each neighbour, then the
  # synthetic image.
  synthetic_image = match = None
  if redaction.shows_training:
    match, match_panel = _image_panel(train, j, "training match")
  else:
    match_panel = Panel("training match", kind="withheld", note="training image redacted")
  before, after = [], []
  if neighbors is not None:
    previous_j, next_j = neighbors(j)
    before = [_neighbour_panel(train, previous_j, match, "previous slice", redaction)]
    after = [_neighbour_panel(train, next_j, match, "next slice", redaction)]
  if redaction.shows_synthetic(i):
    synthetic_image, synthetic_panel = _image_panel(synthetic, i, "synthetic")
  else:
    synthetic_panel = Panel("synthetic", kind="withheld",
                            note=redaction.withheld_text(i))
  if match is not None and aligned is not None:
    moved, transform = aligned(i, match)
    if transform:
      match = moved
      match_panel = Panel(f"training match, moved into the synthetic image's frame "
                          f"(synthetic {transform})",
                          planes.embed_png(planes.plane_png(planes.display_plane(moved))))
  panels = before + [match_panel, synthetic_panel] + after
  if match is not None and synthetic_image is not None:
    overlap = np.isfinite(np.broadcast_to(match, synthetic_image.shape))
    panels.append(Panel("pixel intensities", planes.embed_png(
        figures.scatter_png(match[overlap], synthetic_image[overlap])), kind="figure"))
  else:
    panels.append(Panel("pixel intensities", kind="withheld",
                        note="scatter plot hidden: it would reveal training intensities"))
  return PairRow(rank, synthetic_id, train_id, float(value), bool(value >= threshold), symbol,
                 tuple(panels))


def _neighbour_panel(train: Any, k: int | None, match: np.ndarray | None, name: str,
                     redaction: redaction_lib.Redaction) -> Panel:
  if k is None:
    return Panel(name, kind="withheld", note="no neighbour: first or last slice")
  if not redaction.shows_training:
    return Panel(name, kind="withheld", note=f"{train.image_id(k)} (training image redacted)")
  image, panel = _image_panel(train, k, f"{name} {train.image_id(k)}")
  r = planes.pearson(image, match)
  return dataclasses.replace(panel, caption=panel.caption + f" (r with match {r:.4f})")


def detector_pairs(*, synthetic: Any, train: Any, values: np.ndarray, best: np.ndarray,
                   threshold: float, measure: str, num_pairs: int,
                   redaction: redaction_lib.Redaction, aligned=None) -> Pairs:
  """The closest pairs, the pairs on either side of the threshold and every flagged image
  (`aligned`: how the detector's pairs are drawn, `pair_row`)."""
  words = text.words(measure)
  values = np.asarray(values, np.float64)
  closest = pairs_figure.top_pairs(values, num_pairs)
  near = near_threshold(values, threshold, NEAR_THRESHOLD_PAIRS, exclude=closest)
  ordered = pairs_figure.top_pairs(values, len(values))
  flagged = ordered[values[ordered] >= threshold]
  neighbors = slices.neighbor_lookup(train, best[np.concatenate([closest, near])])

  ranks = {int(i): rank for rank, i in enumerate(ordered, start=1)}

  def rows(indices):
    return [pair_row(ranks[int(i)], int(i), int(best[i]), values[i], synthetic=synthetic,
                     train=train, threshold=threshold, symbol=words["symbol"],
                     redaction=redaction, neighbors=neighbors, aligned=aligned)
            for i in indices]

  listed = []
  for i in flagged[:MAX_FLAGGED_ROWS]:
    thumbnail, withheld = None, redaction.withheld_text(int(i))
    if redaction.shows_synthetic(int(i)):
      plane = planes.display_plane(planes.read_one(synthetic, int(i)))
      thumbnail, withheld = planes.embed_png(planes.plane_png(plane, planes.THUMBNAIL_SIDE)), ""
    listed.append(FlaggedRow(synthetic.image_id(int(i)), train.image_id(int(best[i])),
                             float(values[i]), thumbnail, withheld))
  return Pairs(rows(closest), rows(near), listed, int(flagged.size), neighbors is not None,
               words["symbol"], words["name"])


@dataclasses.dataclass(frozen=True)
class SourceRow:
  name: str
  count: str
  shape: str
  description: str


def source_row(name: str, source: Any, description: str = "") -> SourceRow:
  """A row of the data table: the set's name, its size, its image shape and what it is."""
  shape = "(" + ", ".join(str(int(s)) for s in source.shape) + ")"
  what = str(source.description) + (f"; {description}" if description else "")
  return SourceRow(name, str(len(source)), shape, what)
