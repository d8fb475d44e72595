"""Measuring the detectors themselves: planted copies of training images among novel real images.

A memorization detector is only as good as what it finds, so memjax measures each one the way
a test measures a diagnostic: plant copies of training images, altered as a generator might
alter them, among held-out real images that copy nothing, and count what each detector flags at
its calibrated threshold. `plant_copies` makes the planted set (its labels are the ground truth),
`evaluate` scores one detector against it, `format_table` prints the result;
tools/validate_detectors.py runs every detector of memjax through it.

The kinds of copy (`COPY_KINDS`), each made from a training image:
  exact     the image itself
  scaled    intensities scaled towards the image's minimum by 0.6-0.9
  noisy     Gaussian noise of 3-8% of the image's range added
  shifted   moved by 2-8 pixels (the larger of the two in-plane offsets), the gap filled with
            the image's minimum
  flipped   mirrored left-right
  rotated   rotated in-plane by 3-10 degrees either way (bilinear, minimum fill)
  cropped   a crop of 80-90% of each side, resized back (bilinear)
and two kinds that are not copies: `neighbor` (a slice of a training subject next to a training
slice, not itself trained on: a near copy of the patient, reported apart) and `novel` (a
held-out real image: the false positives).

Reusable beyond the tool (a demo or a report can plant and score the same way), so it lives here;
like the rest of `memjax.memorization` it imports nothing of models or train: an encoder arrives
as an embedding function (`memjax.train.contrastive.load_embedder`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math

import numpy as np

from memjax.data import sources as sources_lib
from memjax.memorization import detectors
from memjax.memorization import transformed as transformed_lib
from memjax.memorization import embedding as embedding_lib
from memjax.memorization import search as search_lib

COPY_KINDS = ("exact", "scaled", "noisy", "shifted", "flipped", "rotated", "cropped")
NEIGHBOR = "neighbor"
NOVEL = "novel"

SCALE_RANGE = (0.6, 0.9)
NOISE_RANGE = (0.03, 0.08)  # standard deviation over the image's range
SHIFT_RANGE = (2, 8)  # pixels, the larger in-plane offset
ROTATION_RANGE = (3.0, 10.0)  # degrees, either way
CROP_RANGE = (0.8, 0.9)  # fraction of each side kept


@dataclasses.dataclass(frozen=True)
class PlantedSet:
  """Planted images and their ground truth.

  images: (M, *shape) in the training images' dtype and range.
  kinds: (M,) str, one of COPY_KINDS, NEIGHBOR or NOVEL.
  sources: (M,) int64 index of the training image copied (for a neighbour, the training slice it
    neighbours); -1 for novel images.
  parameters: (M,) float64 the alteration's size: the scale factor, the noise's standard
    deviation (in pixel units), the shift in pixels (the larger offset), the rotation in degrees
    (signed), the kept fraction of a crop; NaN where there is none.
  """
  images: np.ndarray
  kinds: np.ndarray
  sources: np.ndarray
  parameters: np.ndarray

  @property
  def is_copy(self) -> np.ndarray:
    return np.isin(self.kinds, COPY_KINDS)

  def __len__(self) -> int:
    return len(self.kinds)


def _plane_axes(image: np.ndarray, volumes: bool) -> tuple[int, int]:
  """The in-plane (H, W) axes of an image (H, W[, C]) or a volume (D, H, W[, C])."""
  return (1, 2) if volumes else (0, 1)


def _to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """Float pixel values back in the images' dtype: integers rounded and clipped to its range."""
  if np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)
    return np.clip(np.rint(image), info.min, info.max).astype(dtype)
  return image.astype(dtype)


def bilinear_plane(image: np.ndarray, coordinates: np.ndarray, axes: tuple[int, int],
                   fill: float) -> np.ndarray:
  """`image` sampled bilinearly in the plane of `axes` at coordinates (2, H', W') (row, column).

  Samples outside the plane take `fill`; every other axis (channels, depth) is carried along.
  """
  moved = np.moveaxis(np.asarray(image, np.float64), axes, (0, 1))
  height, width = moved.shape[:2]
  rows, columns = coordinates
  row0, column0 = np.floor(rows).astype(np.int64), np.floor(columns).astype(np.int64)
  out = np.zeros(rows.shape + moved.shape[2:])
  for row_offset in (0, 1):
    for column_offset in (0, 1):
      r, c = row0 + row_offset, column0 + column_offset
      weight = ((rows - row0) if row_offset else (1.0 - (rows - row0))) * (
          (columns - column0) if column_offset else (1.0 - (columns - column0)))
      inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
      values = moved[np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)]
      values = np.where(inside.reshape(inside.shape + (1,) * (moved.ndim - 2)), values, fill)
      out += weight.reshape(weight.shape + (1,) * (moved.ndim - 2)) * values
  return np.moveaxis(out, (0, 1), axes)


def shift_image(image: np.ndarray, offsets: tuple[int, int], axes: tuple[int, int],
                fill: float) -> np.ndarray:
  """`image` moved by integer (row, column) offsets in its plane; the uncovered part is `fill`."""
  out = np.full_like(image, fill)
  source = [slice(None)] * image.ndim
  target = [slice(None)] * image.ndim
  for axis, offset in zip(axes, offsets):
    size = image.shape[axis]
    source[axis] = slice(max(0, -offset), size - max(0, offset))
    target[axis] = slice(max(0, offset), size - max(0, -offset))
  out[tuple(target)] = image[tuple(source)]
  return out


def rotate_image(image: np.ndarray, degrees: float, axes: tuple[int, int],
                 fill: float) -> np.ndarray:
  """`image` rotated in-plane about its centre by `degrees` (bilinear, `fill` outside)."""
  height, width = image.shape[axes[0]], image.shape[axes[1]]
  centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
  rows, columns = np.meshgrid(np.arange(height, dtype=np.float64),
                              np.arange(width, dtype=np.float64), indexing="ij")
  angle = math.radians(degrees)
  cos, sin = math.cos(angle), math.sin(angle)
  dr, dc = rows - centre[0], columns - centre[1]
  coordinates = np.stack([centre[0] + cos * dr - sin * dc, centre[1] + sin * dr + cos * dc])
  return bilinear_plane(image, coordinates, axes, fill)


def crop_and_resize(image: np.ndarray, fraction: float, corner: tuple[float, float],
                    axes: tuple[int, int]) -> np.ndarray:
  """The crop of `fraction` of each side at (row, column) `corner`, resized to the full plane."""
  height, width = image.shape[axes[0]], image.shape[axes[1]]
  rows, columns = np.meshgrid(np.arange(height, dtype=np.float64),
                              np.arange(width, dtype=np.float64), indexing="ij")
  # Pixel centres of the output map onto the crop's pixel grid (align_corners=False).
  coordinates = np.stack([corner[0] + (rows + 0.5) * fraction - 0.5,
                          corner[1] + (columns + 0.5) * fraction - 0.5])
  return bilinear_plane(image, coordinates, axes, float(np.min(image)))


def _copy(image: np.ndarray, kind: str, rng: np.random.Generator, axes: tuple[int, int]
          ) -> tuple[np.ndarray, float]:
  """One altered copy of `image` (float64) and the size of the alteration."""
  low = float(image.min())
  if kind == "exact":
    return image, math.nan
  if kind == "scaled":
    factor = rng.uniform(*SCALE_RANGE)
    return low + factor * (image - low), factor
  if kind == "noisy":
    sigma = rng.uniform(*NOISE_RANGE) * max(float(image.max()) - low, 1e-12)
    return image + sigma * rng.standard_normal(image.shape), sigma
  if kind == "shifted":
    while True:
      offsets = rng.integers(-SHIFT_RANGE[1], SHIFT_RANGE[1] + 1, size=2)
      if np.abs(offsets).max() >= SHIFT_RANGE[0]:
        break
    return shift_image(image, tuple(int(o) for o in offsets), axes, low), float(
        np.abs(offsets).max())
  if kind == "flipped":
    return np.flip(image, axis=axes[1]), math.nan
  if kind == "rotated":
    degrees = rng.uniform(*ROTATION_RANGE) * rng.choice([-1.0, 1.0])
    return rotate_image(image, degrees, axes, low), degrees
  if kind == "cropped":
    fraction = rng.uniform(*CROP_RANGE)
    height, width = image.shape[axes[0]], image.shape[axes[1]]
    corner = (rng.uniform(0, height * (1 - fraction)), rng.uniform(0, width * (1 - fraction)))
    return crop_and_resize(image, fraction, corner, axes), fraction
  raise ValueError(f"unknown kind of copy {kind!r}; expected one of {COPY_KINDS}")


def plant_copies(train: np.ndarray, novel: np.ndarray, *,
                 kinds: Sequence[str] = COPY_KINDS, copies_per_kind: int | None = None,
                 neighbors: np.ndarray | None = None,
                 neighbor_sources: np.ndarray | None = None,
                 train_indices: np.ndarray | None = None, volumes: bool = False,
                 seed: int = 0) -> PlantedSet:
  """Copies of training images of each kind, then the neighbours and the novel images.

  Args:
    train: (N, *shape) training images to copy from (all of them, or a sample).
    novel: (M, *shape) held-out real images, planted as they are.
    kinds: the kinds of copy, from COPY_KINDS.
    copies_per_kind: copies of each kind, of distinct training images while they last (default:
      one of every training image).
    neighbors: (L, *shape) slices next to training slices of the same subjects (optional).
    neighbor_sources: (L,) the training index each neighbour neighbours.
    train_indices: (N,) the indices of `train` in the whole training set, recorded as sources
      (default 0..N-1).
    volumes: images are volumes (D, H, W[, C]); shifts, flips, rotations and crops act in-plane.
    seed: the one seed of every draw.
  """
  train = np.asarray(train)
  novel = np.asarray(novel)
  if novel.shape[1:] != train.shape[1:]:
    raise ValueError(f"novel images of shape {novel.shape[1:]} differ from the training images' "
                     f"{train.shape[1:]}")
  unknown = [kind for kind in kinds if kind not in COPY_KINDS]
  if unknown:
    raise ValueError(f"unknown kinds of copy {unknown}; expected some of {COPY_KINDS}")
  indices = np.arange(len(train)) if train_indices is None else np.asarray(train_indices)
  count = len(train) if copies_per_kind is None else int(copies_per_kind)
  axes = _plane_axes(train[0], volumes)
  rng = np.random.default_rng(seed)
  images, labels, sources, parameters = [], [], [], []
  for kind in kinds:
    picks = np.concatenate([rng.permutation(len(train))
                            for _ in range(-(-count // len(train)))])[:count]
    for pick in picks:
      image, parameter = _copy(train[pick].astype(np.float64), kind, rng, axes)
      images.append(_to_dtype(image, train.dtype))
      labels.append(kind)
      sources.append(indices[pick])
      parameters.append(parameter)
  if neighbors is not None:
    neighbors = np.asarray(neighbors)
    if neighbor_sources is None or len(neighbor_sources) != len(neighbors):
      raise ValueError("neighbor_sources must give the training index of every neighbour")
    images.extend(_to_dtype(n, train.dtype) for n in neighbors)
    labels.extend([NEIGHBOR] * len(neighbors))
    sources.extend(int(s) for s in neighbor_sources)
    parameters.extend([math.nan] * len(neighbors))
  images.extend(_to_dtype(n, train.dtype) for n in novel)
  labels.extend([NOVEL] * len(novel))
  sources.extend([-1] * len(novel))
  parameters.extend([math.nan] * len(novel))
  return PlantedSet(images=np.stack(images), kinds=np.array(labels),
                    sources=np.array(sources, np.int64),
                    parameters=np.array(parameters, np.float64))


# ----------------------------------------------------------------------------------------------
# Scoring a detector.


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
  """P(a positive scores above a negative) + P(tie) / 2: the area under the ROC curve."""
  positive = np.asarray(positive, np.float64)
  negative = np.asarray(negative, np.float64)
  if positive.size == 0 or negative.size == 0:
    return math.nan
  # A NaN score (no defined similarity) ranks below everything.
  positive = np.nan_to_num(positive, nan=-np.inf)
  negative = np.nan_to_num(negative, nan=-np.inf)
  ordered = np.sort(negative)
  below = np.searchsorted(ordered, positive, side="left")
  ties = np.searchsorted(ordered, positive, side="right") - below
  return float((below.sum() + 0.5 * ties.sum()) / (positive.size * negative.size))


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One detector's record on a planted set.

  threshold: the value it flags at; `lower_is_copy` says which side (scores <= threshold for
    distances, >= for similarities).
  rule: how the threshold was set, in words.
  flagged: (M,) bool per planted image.
  rates: the share flagged of each kind present (recall for copies, the false-positive rate for
    NOVEL).
  auc: ROC AUC of all copies against the novel images (threshold-free); auc_by_kind per kind.
  operating_threshold, operating_rates: the same at the loosest threshold that flags at most
    `max_false_positive_rate` of the novel images, chosen on them: the best the score can do at
    that rate, an upper bound on what a threshold calibrated without them achieves.
  """
  name: str
  threshold: float
  lower_is_copy: bool
  rule: str
  flagged: np.ndarray
  rates: Mapping[str, float]
  auc: float
  auc_by_kind: Mapping[str, float]
  operating_threshold: float = math.nan
  operating_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
  num_novel: int = 0

  @property
  def false_positive_rate(self) -> float:
    return self.rates.get(NOVEL, math.nan)

  @property
  def false_positive_interval(self) -> tuple[float, float]:
    """The 95% Wilson interval of the false-positive rate over the `num_novel` novel images."""
    return rate_interval(self.false_positive_rate, self.num_novel)


def rate_interval(rate: float, trials: int) -> tuple[float, float]:
  """The Wilson interval of a rate measured on `trials` images; (nan, nan) when there is none."""
  if trials <= 0 or math.isnan(rate):
    return math.nan, math.nan
  return wilson_interval(round(rate * trials), trials)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
  """Wilson's score interval of a binomial proportion (95% by default); (nan, nan) for 0 trials.

  A rate measured on a few dozen images is uncertain by several points: 4 of 48 is 8%, and
  anything from 3% to 20% is consistent with it.
  """
  if trials <= 0:
    return math.nan, math.nan
  p = successes / trials
  denominator = 1.0 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denominator
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
  return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(name: str, planted: PlantedSet, scores: np.ndarray, *,
             calibration: np.ndarray | None = None, threshold: float | None = None,
             percentile: float = 95.0, lower_is_copy: bool = False,
             max_false_positive_rate: float = 0.05) -> Evaluation:
  """Scores one detector on `planted` at a threshold calibrated as the audit calibrates.

  Args:
    name: the detector's name in the table.
    planted: the planted set.
    scores: (M,) the detector's score of every planted image (NaN: no score, never flagged).
    calibration: each training image's score against the held-out set (Dar et al.'s rule: the
      threshold is its `percentile`, or its 100 - `percentile` for distances); or
    threshold: a fixed threshold instead.
    percentile: see `calibration`.
    lower_is_copy: scores are distances (small = copy) rather than similarities.
    max_false_positive_rate: of the operating point (see `Evaluation`).
  """
  scores = np.asarray(scores, np.float64)
  if scores.shape != planted.kinds.shape:
    raise ValueError(f"{name}: {scores.shape[0]} scores for {len(planted)} planted images")
  if (calibration is None) == (threshold is None):
    raise ValueError("give either calibration scores or a fixed threshold")
  if calibration is not None:
    defined = np.asarray(calibration, np.float64)
    defined = defined[np.isfinite(defined)]
    if defined.size == 0:
      raise ValueError(f"{name}: no finite calibration score")
    level = 100.0 - percentile if lower_is_copy else percentile
    threshold = float(np.percentile(defined, level))
    rule = (f"{percentile:g}th percentile of the training images' "
            f"{'closeness' if lower_is_copy else 'similarity'} to the held-out images")
  else:
    rule = "fixed"
  if lower_is_copy:
    flagged = np.nan_to_num(scores, nan=np.inf) <= threshold
    ranked = -scores
  else:
    flagged = np.nan_to_num(scores, nan=-np.inf) >= threshold
    ranked = scores
  present = [kind for kind in (*COPY_KINDS, NEIGHBOR, NOVEL) if np.any(planted.kinds == kind)]
  rates = {kind: float(np.mean(flagged[planted.kinds == kind])) for kind in present}
  ranked = np.nan_to_num(ranked, nan=-np.inf)
  negative = ranked[planted.kinds == NOVEL]
  auc_by_kind = {kind: roc_auc(ranked[planted.kinds == kind], negative)
                 for kind in present if kind != NOVEL}
  operating_threshold, operating_rates = math.nan, {}
  if negative.size:
    # Flag what scores above the (allowed + 1)-th highest novel score: at most `allowed` novel.
    allowed = int(math.floor(max_false_positive_rate * negative.size + 1e-9))
    cut = np.sort(negative)[::-1][min(allowed, negative.size - 1)]
    above = ranked > cut
    operating_threshold = float(-cut if lower_is_copy else cut)
    operating_rates = {kind: float(np.mean(above[planted.kinds == kind])) for kind in present}
  return Evaluation(name=name, threshold=float(threshold), lower_is_copy=lower_is_copy,
                    rule=rule, flagged=flagged, rates=rates,
                    auc=roc_auc(ranked[planted.is_copy], negative), auc_by_kind=auc_by_kind,
                    operating_threshold=operating_threshold, operating_rates=operating_rates,
                    num_novel=int(negative.size))


def format_table(evaluations: Sequence[Evaluation], operating_point: bool = False) -> str:
  """The evaluations as a fixed-width table: % flagged per kind, false positives, AUC.

  With `operating_point`, the rates at each detector's operating point instead of at its
  calibrated threshold (see `Evaluation`); fixed-threshold rows, whose operating point is their
  score's, are left out.
  """
  if operating_point:
    evaluations = [e for e in evaluations if e.rule != "fixed"]
  def rates_of(e):
    return e.operating_rates if operating_point else e.rates

  kinds = [kind for kind in (*COPY_KINDS, NEIGHBOR)
           if any(kind in rates_of(e) for e in evaluations)]
  name_width = max([len("detector")] + [len(e.name) for e in evaluations])
  headers = [*kinds, "FPR", "FPR 95% CI", "AUC", "threshold"]
  rows = []
  for e in evaluations:
    rates = rates_of(e)
    cells = [f"{100 * rates[k]:.0f}%" if k in rates else "-" for k in kinds]
    cells.append(f"{100 * rates.get(NOVEL, math.nan):.0f}%")
    low, high = rate_interval(rates.get(NOVEL, math.nan), e.num_novel)
    cells.append("-" if math.isnan(low) else f"{100 * low:.0f}-{100 * high:.0f}%")
    cells.append(f"{e.auc:.3f}")
    value = e.operating_threshold if operating_point else e.threshold
    # Calibrated thresholds flag at equality; an operating point flags strictly beyond it.
    cells.append(f"{'<' if e.lower_is_copy else '>'}{'' if operating_point else '='}"
                 f"{value:.4g}")
    rows.append(cells)
  widths = [max([len(h), 6] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
  lines = ["  ".join(["detector".ljust(name_width)]
                     + [h.rjust(w) for h, w in zip(headers, widths)])]
  for e, cells in zip(evaluations, rows):
    lines.append("  ".join([e.name.ljust(name_width)]
                           + [c.rjust(w) for c, w in zip(cells, widths)]))
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Every detector of memjax on one planted set.


@dataclasses.dataclass(frozen=True)
class Validation:
  """The evaluations of every detector, and Meehan's C_T (a set-level test) per planted kind.

  data_copying: {space: {kind: C_T}} for space "pixels" (and "embeddings"); C_T << 0 flags the
    set as copied. None where the test could not run (its message in `notes`).
  """
  evaluations: list[Evaluation]
  data_copying: dict[str, dict[str, float | None]]
  notes: list[str]


def validate(planted: PlantedSet, train, holdout, *, embed_fn=None,
             percentile: float = 95.0, ct_cells: int = 1, ct_min_generated: int = 20,
             seed: int = 0, mesh=None, progress: bool = False) -> Validation:
  """Runs every detector on `planted` against `train`, calibrated on `holdout`.

  Pixel correlation (the audit's search and Dar et al.'s threshold), and, on pixels and (with
  `embed_fn`, a function of images as stored -> embeddings) on embeddings: the correlation of
  embeddings (Dar et al.'s detector), Carlini et al.'s calibrated distance, and authenticity
  (calibrated, and by its own rule). Each calibrated threshold is the `percentile` of the training
  images' scores against `holdout`, the rule the audit applies to correlations. C_T compares
  each kind's planted images with a random half of the held-out images; the other half stands in
  for novel generated images.
  """
  train = sources_lib.open_source(train)
  holdout = sources_lib.open_source(holdout)
  evaluations, notes = [], []

  def correlations(queries, references, names):
    return search_lib.search(queries, references, 1, mesh=mesh, progress=progress,
                             names=names).values[:, 0]

  evaluations.append(evaluate(
      "correlation (pixels)", planted,
      correlations(planted.images, train, ("planted", "training")),
      calibration=correlations(train, holdout, ("training", "holdout")), percentile=percentile))

  # The transform-tolerant correlation (flips, turns by 90 degrees, shifts), calibrated the same way.
  evaluations.append(evaluate(
      "transformed (pixels: flips, turns, shifts)", planted,
      transformed_lib.best_transformed_match(planted.images, train).values,
      calibration=transformed_lib.best_transformed_match(train, holdout).values,
      percentile=percentile))

  spaces = {"pixels": (planted.images, train, holdout)}
  if embed_fn is not None:
    embedded = [embedding_lib.embed(data, embed_fn, progress=progress,
                                    description=f"embedding {role}")
                for data, role in ((planted.images, "planted"), (train, "training"),
                                   (holdout, "holdout"))]
    found = embedding_lib.search_embeddings(*embedded, k=1, holdout_percentile=percentile,
                                            mesh=mesh, progress=progress)
    evaluations.append(evaluate("embedding (Dar et al.)", planted, found.max_correlation,
                                calibration=found.holdout_max, percentile=percentile))
    spaces["embeddings"] = tuple(embedded)

  for space, (queries, references, held_out) in spaces.items():
    evaluations.append(evaluate(
        f"Carlini calibrated L2 ({space})", planted,
        detectors.calibrated_l2(queries, references).scores,
        calibration=detectors.calibrated_l2(references, held_out).scores,
        percentile=percentile, lower_is_copy=True))
    authenticity = detectors.authenticity(queries, references)
    evaluations.append(evaluate(
        f"authenticity ({space})", planted, authenticity.scores,
        calibration=detectors.authenticity(references, held_out).scores,
        percentile=percentile))
    evaluations.append(evaluate(f"authenticity rule d1<=d2 ({space})", planted,
                                authenticity.scores, threshold=0.5))

  held_out_count = len(spaces["pixels"][2])
  order = np.random.default_rng(seed).permutation(held_out_count)
  reference_half, novel_half = np.sort(order[:held_out_count // 2]), np.sort(
      order[held_out_count // 2:])
  data_copying = {}
  for space, (queries, references, held_out) in spaces.items():
    held_out_rows = _take(held_out, reference_half)
    by_kind = {}
    for kind in [*dict.fromkeys(planted.kinds.tolist())]:
      generated = (_take(held_out, novel_half) if kind == NOVEL
                   else _take(queries, np.flatnonzero(planted.kinds == kind)))
      try:
        by_kind[kind] = detectors.data_copying_test(
            references, held_out_rows, generated, num_cells=ct_cells,
            min_generated=ct_min_generated, seed=seed).statistic
      except ValueError as e:
        by_kind[kind] = None
        notes.append(f"C_T ({space}, {kind}): {e}")
    data_copying[space] = by_kind
  return Validation(evaluations=evaluations, data_copying=data_copying, notes=notes)


def _take(data, indices: np.ndarray) -> np.ndarray:
  """Rows `indices` of an array or an image source, as an array."""
  if isinstance(data, np.ndarray):
    return data[indices]
  return np.stack([data.read(int(i), int(i) + 1, dtype=None)[0] for i in indices])


def format_data_copying(data_copying: Mapping[str, Mapping[str, float | None]]) -> str:
  """C_T per space (rows) and planted kind (columns)."""
  kinds = list(dict.fromkeys(k for by_kind in data_copying.values() for k in by_kind))
  width = max([len("C_T")] + [len(space) for space in data_copying])
  widths = [max(len(k), 7) for k in kinds]
  lines = ["  ".join(["C_T".ljust(width)] + [k.rjust(w) for k, w in zip(kinds, widths)])]
  for space, by_kind in data_copying.items():
    cells = ["-" if by_kind.get(k) is None else f"{by_kind[k]:.1f}" for k in kinds]
    lines.append("  ".join([space.ljust(width)] + [c.rjust(w) for c, w in zip(cells, widths)]))
  return "\n".join(lines)
