"""One exact nearest-neighbour search for every detector and measure: `search`.

faiss's shape: `search(queries, references, k, metric=...)` returns each query's k best references
as values and indices. Every audit and measure of memjax runs on it: the pixel audit and the
embedding audit ("correlation", best first: highest), Carlini et al.'s calibrated L2,
authenticity and the data-copying test ("l2", best first: nearest). The work is the same for both
metrics, and written once:

* The reference set streams through device memory in blocks, read one ahead in a background
  thread, split by rows over every device of the mesh; each device keeps a running exact top-k
  (streaming.py, kernels.py). Queries come in chunks, also read one ahead.
* Ties go to the lower reference index, in the kernel and in every merge.
* A query or reference with NaN or infinite values is an error that names the image.
* One progress bar per pass.

What differs is how exact the kernel's values are, and what is refined afterwards, as faiss's
IndexRefine reranks candidates with exact distances:

* "correlation": Pearson correlation over all pixels/voxels and channels. Products in float32 or
  as split bfloat16 products (`precision`), within 1e-5 of float64; matches within REFINE_BAND of
  1, where "copy" or "nearly" is the verdict, are rescored in float64, so an exact copy scores 1.
  Images with zero variance have no correlation and are reported (NaN values, index -1).
* "l2": Euclidean distance over all values. The kernel ranks by float32 2 q.r - |r|^2 and keeps
  L2_EXTRA_CANDIDATES more candidates than asked; every candidate's distance is then formed
  directly in float64 as sqrt(sum((q - r)^2)), so that an exact copy is at distance 0, and the k
  nearest are kept. Values are float64 distances, ascending.

Every set is anything `memjax.data.sources.open_source` opens (a source, an array (N, *shape), a
folder, a file, a tfds: name) or an (N, D) float array of embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jax.sharding import Mesh

from memjax import parallel
from memjax.data import sources as sources_lib
from memjax.memorization import kernels
from memjax.memorization import pieces
from memjax.memorization import streaming
from memjax.memorization.kernels import METRICS
from memjax.memorization.precision import resolve_precision

REFINE_BAND = 1e-4  # correlations scored at 1 - REFINE_BAND or more are rescored in float64
_MAX_REFINED_PAIRS = 1 << 20
L2_EXTRA_CANDIDATES = 8  # candidates beyond k that the l2 kernel keeps for the exact rescoring
_EXACT_BYTES = 256 << 20  # float64 bytes of query and candidate rows held at once when rescoring


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """The outcome of a search.

  values: (N_queries, k), best first: for "correlation" float32 Pearson correlations, descending,
    NaN where none is defined (a query with zero variance, or fewer than k references with
    nonzero variance); for "l2" float64 Euclidean distances, ascending, inf where fewer than k
    references are left.
  indices: (N_queries, k) int64 into the references; -1 where there is no value.
  zero_variance_synthetic, zero_variance_train: indices of the queries and references that have
    no correlation (always empty for "l2").
  precision: the products used ("float32" or "bfloat16x3"); num_devices: the mesh's size.
  """
  values: np.ndarray
  indices: np.ndarray
  zero_variance_synthetic: np.ndarray
  zero_variance_train: np.ndarray
  precision: str = "float32"
  num_devices: int = 1
  metric: str = "correlation"


def as_source(data: Any, role: str) -> sources_lib.ImageSource:
  """`data` as an ImageSource; an (N, D) float array of embeddings becomes N rows (1, D)."""
  if isinstance(data, np.ndarray) and data.ndim == 2 and np.issubdtype(data.dtype, np.floating):
    return sources_lib.ArraySource(data[:, None, :], description=f"{role} embeddings")
  return sources_lib.open_source(data)


def search(queries: Any, references: Any, k: int = 1, *, metric: str = "correlation",
           exclude: np.ndarray | None = None, mesh: Mesh | None = None,
           precision: str = "auto", block_size: int | None = None,
           tile_size: int | None = None, synthetic_chunk: int | None = None,
           progress: bool = False, description: str | None = None,
           names: tuple[str, str] = ("synthetic", "training"),
           budget: kernels.SearchBudget | None = None, resident: bool | None = None,
           refine: bool = True, memory_bytes: int | None = None) -> SearchResult:
  """Each query's k best references by `metric`, exactly (see the module docstring).

  Args:
    queries, references: images or embeddings of one size per row.
    k: references kept per query. For "correlation", a k beyond the references pads with NaN and
      -1; for "l2" it must be at most the references left after `exclude`.
    metric: "correlation" or "l2".
    exclude: (N_queries,) the reference index each query must not match (-1: none); for a set
      against itself, np.arange(N) leaves each image out of its own neighbours.
    mesh: the devices (default: all of them).
    precision: "correlation"'s products: "float32", "bfloat16x3" or "auto" (precision.py). "l2"
      always runs float32 products (its candidates are rescored in float64).
    block_size, tile_size, synthetic_chunk: override the plan (kernels.plan_search).
    progress, description, names: a progress bar, its text, and the two sets' names in messages.
    budget: device memory to use (default `kernels.search_budget(mesh)`); resident: keep the
      references on the devices across query chunks (default: where they fit in the budget).
    refine: "correlation" only: rescore matches within REFINE_BAND of 1 in float64.
    memory_bytes: the most memory the search may hold (default budget.max_bytes, 2 GB on CPUs):
      "correlation" searches of images too large for it run tiled along the pixels (pieces.py).
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
  queries = as_source(queries, names[0])
  references = as_source(references, names[1])
  sources_lib.check_same_shape(queries, references)
  mesh = mesh if mesh is not None else parallel.data_mesh()
  if exclude is not None:
    exclude = np.asarray(exclude, np.int64).reshape(-1)
    if exclude.size != len(queries):
      raise ValueError(f"exclude has {exclude.size} entries for {len(queries)} queries")
    exclude = exclude.astype(np.int32)
  num_references = len(references)
  if metric == "l2":
    available = num_references - (1 if exclude is not None and (exclude >= 0).any() else 0)
    if not 1 <= k <= available:
      raise ValueError(f"k={k} nearest neighbours asked of {num_references} {names[1]} images"
                       + (" (one excluded per query)" if available < num_references else "")
                       + f"; k must lie in [1, {available}]")
    kernel_k = min(k + L2_EXTRA_CANDIDATES, num_references)
    precision = "float32"
  else:
    kernel_k = min(k, num_references)  # pad at the end; plan_search rejects k < 1
    precision = resolve_precision(precision, mesh)
  budget = budget if budget is not None else kernels.search_budget(mesh)
  if memory_bytes is not None:
    budget = dataclasses.replace(budget, max_bytes=int(memory_bytes))
  image_size = int(np.prod(references.shape))
  itemsize = max(streaming.transfer_dtype(queries).itemsize,
                 streaming.transfer_dtype(references).itemsize)
  if metric == "correlation" and pieces.needs_pieces(image_size, itemsize,
                                                     parallel.mesh_size(mesh), budget):
    values, index, query_status, reference_status = pieces.search_in_pieces(
        queries, references, kernel_k, budget, mesh.devices.flat[0], exclude=exclude,
        progress=progress, description=description or f"{names[0]} vs {names[1]}",
        names=names)
    return _correlation_result(queries, references, values, index, query_status,
                               reference_status, k, kernel_k, refine, precision="float32",
                               num_devices=1)
  plan = kernels.plan_search(len(queries), num_references, image_size, kernel_k,
                             parallel.mesh_size(mesh), block_size=block_size,
                             tile_size=tile_size, synthetic_chunk=synthetic_chunk, budget=budget)
  if resident is None:
    resident = (plan.num_synthetic_chunks > 1 and streaming.device_bytes(
        plan, streaming.transfer_dtype(references)) <= budget.resident_bytes)
  settings = dict(precision=precision, metric=metric, exclude=exclude, progress=progress,
                  description=description or f"{names[0]} vs {names[1]}", names=names,
                  staging=budget.staging, resident=resident,
                  read_ahead=queries is not references)
  values, index, query_status, reference_status = streaming.stream(
      queries, references, plan, mesh, **settings)
  if metric == "l2":
    distances, index = _nearest_exactly(queries, references, index, k)
    return SearchResult(values=distances, indices=index,
                        zero_variance_synthetic=np.zeros(0, np.int64),
                        zero_variance_train=np.zeros(0, np.int64), precision=precision,
                        num_devices=plan.num_devices, metric=metric)

  values, index = _recentred(queries, references, values, index, reference_status, plan,
                             mesh, budget, kernel_k, settings)
  return _correlation_result(queries, references, values, index, query_status,
                             reference_status, k, kernel_k, refine, precision=precision,
                             num_devices=plan.num_devices)


def _correlation_result(queries, references, values, index, query_status, reference_status, k,
                        kernel_k, refine, *, precision, num_devices) -> SearchResult:
  """Pads to k, marks queries without a correlation, refines near-exact matches."""
  if kernel_k < k:
    values, index = streaming.merge_candidates(values, index, k)  # pads with NaN and -1
  no_correlation = query_status != kernels.OK
  values[no_correlation] = np.nan
  index[no_correlation] = -1
  if refine:
    values, index = refine_near_exact(values, index, queries, references)
  return SearchResult(
      values=values, indices=index,
      zero_variance_synthetic=np.flatnonzero(query_status == kernels.ZERO_VARIANCE),
      zero_variance_train=np.flatnonzero(reference_status == kernels.ZERO_VARIANCE),
      precision=precision, num_devices=num_devices, metric="correlation")


def _recentred(queries, references, values, index, reference_status, plan, mesh, budget,
               kernel_k, settings):
  """Searches again, centred first, the references that a raw product cannot score exactly
  (large offset under little texture: status RECENTRE), and merges them in."""
  recentre = np.flatnonzero(reference_status == kernels.RECENTRE)
  if not recentre.size:
    return values, index
  subset = sources_lib.IndexedSource(references, recentre)
  subset_plan = kernels.plan_search(len(queries), len(subset), plan.image_size,
                                    min(kernel_k, len(subset)), plan.num_devices,
                                    synthetic_chunk=plan.synthetic_chunk, budget=budget)
  exclude = settings["exclude"]
  if exclude is not None:  # the excluded reference's position in the subset, or none
    position = np.searchsorted(recentre, exclude)
    found = (position < recentre.size) & (recentre[np.minimum(position, recentre.size - 1)]
                                          == exclude)
    exclude = np.where(found, position, -1).astype(np.int32)
  subset_settings = {**settings, "exclude": exclude, "precision": "float32",
                     "description": f"{settings['description']} (re-centred)"}
  subset_values, subset_index, _, subset_status = streaming.stream(
      queries, subset, subset_plan, mesh, centred=True, **subset_settings)
  reference_status[recentre] = subset_status
  subset_index = np.where(subset_index >= 0, recentre[np.maximum(subset_index, 0)], -1)
  return streaming.merge_candidates(np.concatenate([values, subset_values], axis=1),
                                    np.concatenate([index, subset_index], axis=1), kernel_k)


def refine_near_exact(values: np.ndarray, index: np.ndarray, synthetic: sources_lib.ImageSource,
                      train: sources_lib.ImageSource) -> tuple[np.ndarray, np.ndarray]:
  """Rescores every correlation within REFINE_BAND of 1 in float64, and re-sorts its row.

  A float32 matrix product of long vectors rounds by a few 1e-6 (its sums run over every pixel),
  enough to score an exact copy 0.999997: within the search's 1e-5, but a privacy officer reads
  "1.000000" as "a copy" and "0.999997" as "nearly one". The band around 1 is where that
  difference is the verdict, so its matches are recomputed exactly: an exact copy then scores 1.
  Near copies are rare, and each costs two image reads (piece by piece in float64: memory does
  not grow with the image); past _MAX_REFINED_PAIRS the values are left as the search found them.
  """
  rows, columns = np.nonzero(np.nan_to_num(values, nan=-np.inf) >= 1 - REFINE_BAND)
  if not rows.size or rows.size > _MAX_REFINED_PAIRS:
    return values, index
  values = values.copy()
  for row in np.unique(rows):
    query = synthetic.read(int(row), int(row) + 1, dtype=None)
    for column in columns[rows == row]:
      match = int(index[row, column])
      values[row, column] = pieces.exact_correlation(
          query, train.read(match, match + 1, dtype=None))
    order = np.lexsort((index[row], -values[row]))
    values[row], index[row] = values[row][order], index[row][order]
  return values, index


def _nearest_exactly(queries: sources_lib.ImageSource, references: sources_lib.ImageSource,
                     candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k nearest of each query's candidates by float64 distance formed directly, then index.

  The candidates' rows are read once per chunk of queries (at most _EXACT_BYTES at once).
  """
  count, width = candidates.shape
  row_size = int(np.prod(references.shape))
  squared = np.full((count, width), np.inf)
  step = max(1, _EXACT_BYTES // (8 * row_size * (width + 1)))
  for start in range(0, count, step):
    stop = min(start + step, count)
    chunk = candidates[start:stop]
    needed = np.unique(chunk[chunk >= 0])
    if not needed.size:
      continue
    query_rows = queries.read(start, stop, dtype=np.float64).reshape(stop - start, -1)
    reference_rows = sources_lib.IndexedSource(references, needed).read(
        0, needed.size, dtype=np.float64).reshape(needed.size, -1)
    positions = np.searchsorted(needed, np.maximum(chunk, 0))
    for i in range(stop - start):
      difference = query_rows[i][None, :] - reference_rows[positions[i]]
      squared[start + i] = np.einsum("ij,ij->i", difference, difference)
  squared[candidates < 0] = np.inf
  sort_index = np.where(candidates >= 0, candidates, np.iinfo(np.int64).max)
  order = np.lexsort((sort_index, squared), axis=1)[:, :k]
  distances = np.sqrt(np.take_along_axis(squared, order, axis=1))
  index = np.take_along_axis(candidates, order, axis=1)
  index[~np.isfinite(distances)] = -1
  return distances, index
