"""Decision rules: when is a synthetic image a copy of a training image? The established measures.

A threshold is calibrated, not guessed: Dar et al. (2023) call a synthetic sample a copy when it is
more similar to a training sample than the 95th percentile of each training sample's similarity to
its nearest held-out real sample, i.e. more similar than real, different patients usually are.
Fixed thresholds (0.90, 0.95, 0.99) are reported beside it. memjax counts an image at or above a
threshold (the report's histogram bins start at the threshold, so its bars agree with the count).

Beside the correlation search, the measures of the literature, on pixels or embeddings, exact in
float64 on the one nearest-neighbour search (`search.search`, metric "l2"): Carlini et al.
(2023)'s calibrated L2 distance (`calibrated_l2`), the authenticity of Alaa et al. (2022) as
dgm-eval's AuthPct computes it (`authenticity`), and Meehan et al. (2020)'s data-copying test C_T
(`data_copying_test`, with its PCA, k-means and Mann-Whitney Z written here in numpy).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from memjax.memorization import search as search_lib

FIXED_THRESHOLDS = (0.90, 0.95, 0.99)


@dataclasses.dataclass(frozen=True)
class Threshold:
  value: float
  rule: str  # "holdout_percentile" or "fixed"
  description: str  # one sentence for people


def holdout_threshold(holdout_max: np.ndarray, percentile: float = 95.0,
                      num_holdout: int | None = None, *,
                      similarity: str = "correlation") -> Threshold:
  """Dar et al.'s rule from each training image's best similarity with the held-out set.

  A best match over fewer images is lower, so a holdout set much smaller than the training set
  gives a threshold that is biased low; the description says so when `num_holdout` shows it.
  `similarity` names what was compared, for the description ("correlation of embeddings").
  """
  defined = holdout_max[np.isfinite(holdout_max)]
  if defined.size == 0:
    raise ValueError("no training image has a defined correlation with the holdout set "
                     "(all have zero variance?); give --config.audit.threshold instead")
  check_percentile(percentile)
  value = float(np.percentile(defined.astype(np.float64), percentile))
  description = (f"{percentile:g}th percentile of each training image's best {similarity} "
                 f"with the held-out real images, over {defined.size} training images (Dar et al. "
                 "2023): a synthetic image at least as similar to a training image is called "
                 "memorized")
  if num_holdout is not None and num_holdout < holdout_max.size / 2:
    description += (f". The holdout set ({num_holdout} images) is much smaller than the training "
                    f"set ({holdout_max.size}): a best match over fewer images is lower, so this "
                    "threshold is biased low and flags more images; use a holdout set of a "
                    "similar size")
  return Threshold(value=value, rule="holdout_percentile", description=description)


# A threshold this close to 1 flags only exact copies (which score exactly 1) and near-exact ones:
# a calibration that lands here has a holdout set of copies (see calibrate_threshold).
MAX_THRESHOLD = 0.99999


def check_percentile(percentile: float) -> None:
  if not 0.0 < percentile < 100.0:
    raise ValueError(f"the holdout percentile must be in (0, 100), got {percentile}")


def fixed_threshold(value: float, *, similarity: str = "correlation") -> Threshold:
  if not -1.0 <= value <= MAX_THRESHOLD:
    raise ValueError(f"a correlation threshold must lie in [-1, {MAX_THRESHOLD}], got {value}: "
                     "correlations are exact to 1e-5, so exact copies may score a hair below 1")
  return Threshold(value=float(value), rule="fixed",
                   description=f"fixed threshold {value:g} on the {similarity} "
                               "(config.audit.threshold); give "
                               "--config.holdout to calibrate one on held-out real images")


def is_memorized(max_correlation: np.ndarray, threshold: float) -> np.ndarray:
  """True where the best correlation is at or above the threshold (False where undefined)."""
  return np.nan_to_num(max_correlation, nan=-np.inf) >= threshold


def fraction_above(max_correlation: np.ndarray, threshold: float) -> float:
  """Share of the images with a defined correlation at or above the threshold."""
  defined = np.isfinite(max_correlation)
  if not defined.any():
    return float("nan")
  return float(np.mean(max_correlation[defined] >= threshold))


# ----------------------------------------------------------------------------------------------
# The established copy measures, on pixels or embeddings: exact (float64), streaming.
#
# Each takes images or embeddings as anything `memjax.data.sources.open_source` opens (a source,
# an array (N, *shape), a folder, a file, a tfds: name) or an (N, D) array of embeddings, and
# compares their values as stored: give every set in the same units (the same dtype and range,
# or the same encoder). Distances are Euclidean over all pixels (or dimensions) and channels.

_BLOCK_BYTES = 64 << 20  # float64 bytes of one block of rows read for PCA and projections


def _rows_source(data, role: str):
  """`data` as an ImageSource; an (N, D) float array of embeddings becomes N rows (1, D)."""
  return search_lib.as_source(data, role)


def _rows_per_block(row_size: int, block_size: int | None) -> int:
  if block_size is not None:
    if block_size < 1:
      raise ValueError(f"block_size must be positive, got {block_size}")
    return int(block_size)
  return max(1, _BLOCK_BYTES // (8 * row_size))


def _read_rows(source, start: int, stop: int, role: str) -> np.ndarray:
  """Rows [start, stop) of a source, flattened, float64; non-finite values are an error."""
  rows = source.read(start, stop, dtype=np.float64).reshape(stop - start, -1)
  bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
  if bad.size:
    raise ValueError(f"{role} image {source.image_id(start + int(bad[0]))} of "
                     f"{source.description} has NaN or infinite values; fix or remove it")
  return rows


@dataclasses.dataclass(frozen=True)
class CalibratedDistance:
  """Carlini et al. (2023)'s calibrated L2 distance of each synthetic image.

  scores: (N,) l2(x, nearest) / (alpha * mean l2 to the `num_neighbors` nearest training images);
    small means copied (an exact copy scores 0; an image as near its nearest training image as to
    the others scores 1 / alpha). 0 where all those neighbours are at distance 0.
  nearest_index: (N,) int64 the nearest training image.
  nearest_distance, mean_distance: (N,) float64 the numerator's distance and the mean it is
    compared with.
  """
  scores: np.ndarray
  nearest_index: np.ndarray
  nearest_distance: np.ndarray
  mean_distance: np.ndarray
  alpha: float
  num_neighbors: int


def calibrated_l2(synthetic, train, *, alpha: float = 0.5, num_neighbors: int = 50,
                  block_size: int | None = None, progress: bool = False) -> CalibratedDistance:
  """Carlini et al. (2023)'s calibrated distance, exactly (see `CalibratedDistance`).

  Carlini et al. call a generation extracted when this is small (alpha 0.5, 50 neighbours). A
  training set of fewer than `num_neighbors` images uses all of them.
  """
  if alpha <= 0:
    raise ValueError(f"alpha must be positive, got {alpha}")
  if num_neighbors < 1:
    raise ValueError(f"num_neighbors must be at least 1, got {num_neighbors}")
  train_source = _rows_source(train, "training")
  count = min(int(num_neighbors), len(train_source))
  neighbors = search_lib.search(synthetic, train_source, count, metric="l2",
                                block_size=block_size, progress=progress,
                                names=("synthetic", "training"))
  nearest = neighbors.values[:, 0]
  mean = neighbors.values.mean(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    scores = np.where(mean > 0, nearest / (alpha * mean), 0.0)
  return CalibratedDistance(scores=scores, nearest_index=neighbors.indices[:, 0],
                            nearest_distance=nearest, mean_distance=mean, alpha=float(alpha),
                            num_neighbors=count)


@dataclasses.dataclass(frozen=True)
class Authenticity:
  """Authenticity of each synthetic image (Alaa et al. 2022, as dgm-eval's AuthPct computes it).

  authentic: (N,) bool, True where train_distance < distance: the synthetic image lies farther
    from its nearest training image than that training image lies from its own nearest other
    training image. An unauthentic image sits closer to a training image than real images do.
  nearest_index: (N,) int64 the nearest training image.
  distance: (N,) float64 the synthetic image's distance to it.
  train_distance: (N,) float64 that training image's distance to its nearest other one.
  """
  authentic: np.ndarray
  nearest_index: np.ndarray
  distance: np.ndarray
  train_distance: np.ndarray

  @property
  def percent(self) -> float:
    """dgm-eval's AuthPct: the percentage of authentic synthetic images."""
    return float(100.0 * np.mean(self.authentic))

  @property
  def scores(self) -> np.ndarray:
    """train_distance / (distance + train_distance) in [0, 1]: >= 0.5 exactly when unauthentic.

    A copy-likeness to rank images by (1 for an exact copy); 1 where both distances are 0.
    """
    total = self.distance + self.train_distance
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(total > 0, self.train_distance / total, 1.0)


def authenticity(synthetic, train, *, block_size: int | None = None,
                 progress: bool = False) -> Authenticity:
  """Each synthetic image's authenticity (see `Authenticity`), exactly.

  The training set is searched twice: for each synthetic image's nearest training image, then
  for those training images' nearest other training images (each image left out of its own
  search, as dgm-eval fills the diagonal with infinity; a duplicate training image is at 0).
  """
  from memjax.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  train_source = _rows_source(train, "training")
  if len(train_source) < 2:
    raise ValueError("authenticity needs at least 2 training images (each one's nearest other "
                     "training image)")
  nearest = search_lib.search(synthetic, train_source, 1, metric="l2", block_size=block_size,
                              progress=progress, names=("synthetic", "training"))
  nearest_index = nearest.indices[:, 0]
  needed = np.unique(nearest_index)
  own = search_lib.search(sources_lib.IndexedSource(train_source, needed), train_source, 1,
                          metric="l2", exclude=needed, block_size=block_size,
                          progress=progress, names=("training", "training"))
  train_distance = own.values[np.searchsorted(needed, nearest_index), 0]
  distance = nearest.values[:, 0]
  return Authenticity(authentic=train_distance < distance, nearest_index=nearest_index,
                      distance=distance, train_distance=train_distance)


# Meehan et al. (2020)'s data-copying test.


@dataclasses.dataclass(frozen=True)
class PCA:
  """A principal-component projection: (x - mean) @ components, components (D, q) orthonormal."""
  mean: np.ndarray
  components: np.ndarray
  explained_variance: np.ndarray

  def project(self, data, *, block_size: int | None = None) -> np.ndarray:
    """(N, q) float64 coordinates of `data` (images or embeddings), streamed in blocks."""
    source = _rows_source(data, "projected")
    if int(np.prod(source.shape)) != self.mean.size:
      raise ValueError(f"{source.description} has rows of shape {source.shape}; the PCA was fit "
                       f"on rows of {self.mean.size} values")
    rows = _rows_per_block(self.mean.size, block_size)
    return np.concatenate([
        (_read_rows(source, start, min(start + rows, len(source)), "projected") - self.mean)
        @ self.components for start in range(0, len(source), rows)])


# Past these sizes the D x D covariance or the N x N Gram matrix would not fit comfortably.
_MAX_COVARIANCE_SIZE = 8192
_MAX_GRAM_SIZE = 30000


def pca_fit(train, num_components: int, *, method: str = "auto",
            block_size: int | None = None) -> PCA:
  """The first principal components of the training rows, exactly, streamed in blocks.

  method: "covariance" (eigenvectors of the D x D covariance), "gram" (of the N x N Gram matrix of
  the centred rows, for images with more pixels than there are images), or "auto" (the smaller).
  At most min(num_components, N - 1, D) components: the rest have no variance.
  """
  source = _rows_source(train, "training")
  n, size = len(source), int(np.prod(source.shape))
  if method == "auto":
    method = "covariance" if size <= min(n, _MAX_COVARIANCE_SIZE) else "gram"
  if method not in ("covariance", "gram"):
    raise ValueError(f"method must be 'auto', 'covariance' or 'gram', not {method!r}")
  if method == "gram" and n > _MAX_GRAM_SIZE:
    raise ValueError(f"PCA of {n} training images of {size} values each needs an {n}x{n} Gram "
                     "matrix; run the measure on embeddings, or on a subset of the training set")
  if method == "covariance" and size > _MAX_COVARIANCE_SIZE:
    raise ValueError(f"PCA of rows of {size} values needs a {size}x{size} covariance; use "
                     "method='gram' or embeddings")
  count = min(int(num_components), n - 1, size)
  if count < 1:
    raise ValueError(f"PCA needs at least 2 training images and 1 component, got {n} images")
  rows = _rows_per_block(size, block_size)
  starts = range(0, n, rows)

  def block(start):
    return _read_rows(source, start, min(start + rows, n), "training")

  mean = sum(block(start).sum(axis=0) for start in starts) / n
  if method == "covariance":
    scatter = np.zeros((size, size))
    for start in starts:
      centred = block(start) - mean
      scatter += centred.T @ centred
    values, vectors = np.linalg.eigh(scatter)
    order = np.argsort(values)[::-1][:count]
    components = vectors[:, order]
    values = values[order]
  else:
    gram = np.zeros((n, n))
    for i in starts:
      left = block(i) - mean
      for j in starts:
        if j >= i:
          product = left @ (block(j) - mean).T
          gram[i:i + len(left), j:j + product.shape[1]] = product
          gram[j:j + product.shape[1], i:i + len(left)] = product.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][:count]
    values, vectors = values[order], vectors[:, order]
    if values[-1] <= 0:
      raise ValueError("the training rows span fewer dimensions than the PCA asks for; lower "
                       "num_components")
    # The covariance's eigenvectors are the centred rows' combinations X_c^T u / sqrt(lambda).
    components = np.zeros((size, count))
    for start in starts:
      centred = block(start) - mean
      components += centred.T @ vectors[start:start + len(centred)]
    components /= np.sqrt(values)
  return PCA(mean=mean, components=components, explained_variance=values / max(n - 1, 1))


def kmeans(points: np.ndarray, num_clusters: int, *, seed: int = 0, num_init: int = 10,
           max_iterations: int = 300) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means from k-means++ seeds, the best of `num_init` runs: (centroids, labels).

  Seeded numpy, no scikit-learn: the same seed gives the same cells. An empty cluster is reseeded
  at the point farthest from its centroid.
  """
  points = np.asarray(points, np.float64)
  n = len(points)
  if not 1 <= num_clusters <= n:
    raise ValueError(f"cannot make {num_clusters} k-means cells of {n} points")
  rng = np.random.default_rng(seed)

  def squared_to(centroids):
    return (np.einsum("ij,ij->i", points, points)[:, None] - 2.0 * points @ centroids.T
            + np.einsum("ij,ij->i", centroids, centroids)[None, :]).clip(min=0.0)

  best = None
  for _ in range(max(1, num_init)):
    centroids = [points[rng.integers(n)]]
    nearest = squared_to(np.array(centroids))[:, 0]
    for _ in range(1, num_clusters):
      total = nearest.sum()
      pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
      centroids.append(points[pick])
      nearest = np.minimum(nearest, squared_to(points[pick][None])[:, 0])
    centroids = np.array(centroids)
    labels = None
    for _ in range(max_iterations):
      distances = squared_to(centroids)
      new_labels = np.argmin(distances, axis=1)
      if labels is not None and np.array_equal(new_labels, labels):
        break
      labels = new_labels
      for cluster in range(num_clusters):
        members = labels == cluster
        if members.any():
          centroids[cluster] = points[members].mean(axis=0)
        else:
          far = int(np.argmax(distances[np.arange(n), labels]))
          centroids[cluster] = points[far]
    inertia = float(squared_to(centroids)[np.arange(n), labels].sum())
    if best is None or inertia < best[0]:
      best = (inertia, centroids.copy(), labels.copy())
  return best[1], best[2]


def mann_whitney_u(x: np.ndarray, y: np.ndarray) -> float:
  """U of the first sample: the pairs with x_i > y_j, ties counted 1/2 (scipy's statistic)."""
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  values, inverse, counts = np.unique(np.concatenate([x, y]), return_inverse=True,
                                      return_counts=True)
  del values
  average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each tie group
  return float(average_rank[inverse[:x.size]].sum() - x.size * (x.size + 1) / 2.0)


def meehan_z(generated_distances: np.ndarray, holdout_distances: np.ndarray) -> float:
  """Meehan et al.'s Z-scored Mann-Whitney U of generated vs held-out nearest-training distances.

  Z = (U - (m n / 2 - 1/2)) / sqrt(m n (m + n + 1) / 12), U that of the generated sample (their
  continuity correction, no tie correction). Negative: generated samples lie nearer the
  training set than held-out ones do.
  """
  m, n = np.size(generated_distances), np.size(holdout_distances)
  u = mann_whitney_u(generated_distances, holdout_distances)
  return float((u - (m * n / 2.0 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12.0))


@dataclasses.dataclass(frozen=True)
class DataCopyingTest:
  """Meehan et al. (2020)'s C_T and its cells.

  statistic: C_T, the held-out-weighted mean of the cells' Z scores; << 0 (e.g. below -3) means
    the generated samples copy the training set, >> 0 that they underfit it.
  cell_z: (K,) each cell's Z; NaN in cells left out (too few generated samples).
  cell_holdout_fraction: (K,) the share of held-out samples in each cell (the weights).
  cell_generated_count, cell_train_count: (K,) samples in each cell.
  cell_used: (K,) cells with more than `min_generated` generated samples.
  num_components: the dimensions after PCA (the input's when it had at most that many).
  """
  statistic: float
  cell_z: np.ndarray
  cell_holdout_fraction: np.ndarray
  cell_generated_count: np.ndarray
  cell_train_count: np.ndarray
  cell_used: np.ndarray
  num_components: int


def _nearest_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
  """Each query's exact Euclidean distance to its nearest reference (small, in-memory sets)."""
  return search_lib.search(queries, references, 1, metric="l2",
                           names=("query", "reference")).values[:, 0]


def data_copying_test(train, holdout, generated, *, num_cells: int = 3,
                      num_components: int = 64, min_generated: int = 20, seed: int = 0,
                      num_init: int = 10, block_size: int | None = None) -> DataCopyingTest:
  """Meehan et al. (2020)'s C_T test of generated samples, as dgm-eval computes it, exactly.

  The rows (images or embeddings) are projected on the training set's first `num_components`
  principal components when they have more values than that; the training set is cut into
  `num_cells` k-means cells (seeded); in each cell, each held-out and generated sample's distance
  to its nearest training sample of the cell gives a Mann-Whitney Z of generated against
  held-out (`meehan_z`); C_T averages the Z of the cells holding more than `min_generated`
  generated samples, weighted by their share of held-out samples (dgm-eval: 3 cells, more than 20
  generated samples per cell).

  Raises:
    ValueError: when a cell holds no held-out or no training sample (use fewer cells), or when
      no cell holds more than `min_generated` generated samples (generate more, or fewer cells).
  """
  train_source = _rows_source(train, "training")
  size = int(np.prod(train_source.shape))
  if size > num_components:
    pca = pca_fit(train_source, num_components, block_size=block_size)
    project = functools.partial(pca.project, block_size=block_size)
    components = pca.components.shape[1]
  else:
    def project(data):
      source = _rows_source(data, "projected")
      return _read_rows(source, 0, len(source), "projected")
    components = size
  train_points = project(train_source)
  holdout_points = project(holdout)
  generated_points = project(generated)
  centroids, train_cells = kmeans(train_points, num_cells, seed=seed, num_init=num_init)

  def cells_of(points):
    distances = (np.einsum("ij,ij->i", points, points)[:, None] - 2.0 * points @ centroids.T
                 + np.einsum("ij,ij->i", centroids, centroids)[None, :])
    return np.argmin(distances, axis=1)

  holdout_cells, generated_cells = cells_of(holdout_points), cells_of(generated_points)
  train_count = np.bincount(train_cells, minlength=num_cells)
  holdout_count = np.bincount(holdout_cells, minlength=num_cells)
  generated_count = np.bincount(generated_cells, minlength=num_cells)
  for cell in range(num_cells):
    if holdout_count[cell] == 0 or train_count[cell] == 0:
      raise ValueError(
          f"C_T cell {cell} of {num_cells} holds {holdout_count[cell]} held-out and "
          f"{train_count[cell]} training samples; every cell needs both: use fewer cells "
          "(num_cells) or a larger held-out set")
  used = generated_count > min_generated
  if not used.any():
    raise ValueError(
        f"no C_T cell holds more than {min_generated} generated samples (counts "
        f"{generated_count.tolist()}); give more generated samples or use fewer cells")
  cell_z = np.full(num_cells, np.nan)
  for cell in np.flatnonzero(used):
    cell_train = train_points[train_cells == cell]
    cell_z[cell] = meehan_z(_nearest_distances(generated_points[generated_cells == cell],
                                               cell_train),
                            _nearest_distances(holdout_points[holdout_cells == cell], cell_train))
  fraction = holdout_count / holdout_count.sum()
  statistic = float(np.sum(fraction[used] * cell_z[used]) / np.sum(fraction[used]))
  return DataCopyingTest(statistic=statistic, cell_z=cell_z, cell_holdout_fraction=fraction,
                         cell_generated_count=generated_count, cell_train_count=train_count,
                         cell_used=used, num_components=components)
