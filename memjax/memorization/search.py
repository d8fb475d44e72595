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

* "correlation": Pearson correlation over all pixels/voxels and channels. The kernel ranks by
  products in float32 or split bfloat16 (`precision`) and keeps SPARE_CANDIDATES more candidates
  than asked; the best candidates are rescored in float64 from the source (`rescore`: the first
  k + 1, the rest only where the proof below needs them) and the k best by float64 value (ties
  to the lower index) are reported: every value is the float64
  Pearson correlation, and an exact copy scores 1. The spare candidates are enough when a bound
  proves it: the kernel's score of any pair is within `score_error_bound` of its float64 value,
  so a reference not rescored scores at most the kernel's score of the first candidate not
  rescored (of its last candidate, once all are) plus the bound, and when the k-th float64 value beats that, no
  reference left out could be among the k best.
  Queries without that proof are searched again with four times the candidates, until the
  proof holds or every reference is a candidate (`_exact_top_k`).
  Images with zero variance have no correlation and are reported (NaN values, index -1).
* "l2": Euclidean distance over all values. The kernel ranks by float32 2 q.r - |r|^2 and keeps
  L2_EXTRA_CANDIDATES more candidates than asked; every candidate's distance is then formed
  directly in float64 as sqrt(sum((q - r)^2)), so that an exact copy is at distance 0, and the k
  nearest are kept. Values are float64 distances, ascending.

Every set is anything `memjax.data.sources.open_source` opens (a source, an array (N, *shape), a
folder, a file, a tfds: name) or an (N, D) float array of embeddings.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
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

SPARE_CANDIDATES = 8  # candidates beyond k that the correlation kernel keeps for the rescoring
FIRST_RESCORED = 1  # candidates beyond k rescored for every query; the rest only where needed
L2_EXTRA_CANDIDATES = 8  # candidates beyond k that the l2 kernel keeps for the exact rescoring
_EXACT_BYTES = 32 << 20  # float64 bytes of query and candidate rows held at once when rescoring
_PAIRS_AT_ONCE = 256  # pairs whose float64 rows are gathered at once for their products


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """The outcome of a search.

  values: (N_queries, k), best first: for "correlation" float64 Pearson correlations, descending,
    NaN where none is defined (a query with zero variance, or fewer than k references with
    nonzero variance); for "l2" float64 Euclidean distances, ascending, inf where fewer than k
    references are left.
  indices: (N_queries, k) int64 into the references; -1 where there is no value.
  zero_variance_synthetic, zero_variance_train: indices of the queries and references that have
    no correlation (always empty for "l2").
  precision: the products that ranked the candidates ("float32" or "bfloat16x3"); num_devices:
    the mesh's size.
  searched_again: queries whose spare candidates were not proven enough and which were searched
    again with more ("correlation" only).
  """
  values: np.ndarray
  indices: np.ndarray
  zero_variance_synthetic: np.ndarray
  zero_variance_train: np.ndarray
  precision: str = "float32"
  num_devices: int = 1
  metric: str = "correlation"
  searched_again: int = 0


_MMAP_THRESHOLD = 1 << 20  # bytes from which glibc maps allocations (and unmaps them when freed)
_heap_fixed = False


def _fix_heap_growth() -> None:
  """Large numpy temporaries give their memory back when freed: glibc's malloc otherwise raises
  its mmap threshold after the first large free (up to 32 MB) and then keeps freed blocks of
  every thread's arena resident, which made a streamed search's peak RSS grow by 100-200 MB
  (577 -> 401 MB measured on the benchmark's 262 MB training file). Once per process, on glibc
  only, and never against a MALLOC_MMAP_THRESHOLD_ the user set."""
  global _heap_fixed
  if _heap_fixed:
    return
  _heap_fixed = True
  if "MALLOC_MMAP_THRESHOLD_" in os.environ:
    return
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD: fixed, so no longer dynamic
  except (OSError, AttributeError):  # not glibc
    pass


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
    refine: "correlation" only: report float64 values (rescored candidates); False reports the
      kernel's own scores (its float32 estimates), for benchmarks and tests of the kernel.
    memory_bytes: the most memory the search may hold (default budget.max_bytes, 2 GB on CPUs):
      "correlation" searches of images too large for it run tiled along the pixels (pieces.py).
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  _fix_heap_growth()
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
    spare = SPARE_CANDIDATES if refine else 0
    kernel_k = min(k + spare, num_references)  # pad at the end; plan_search rejects k < 1
    precision = resolve_precision(precision, mesh)
  budget = budget if budget is not None else kernels.search_budget(mesh)
  if memory_bytes is not None:
    budget = dataclasses.replace(budget, max_bytes=int(memory_bytes))
  settings = dict(precision=precision, exclude=exclude, progress=progress,
                  description=description or f"{names[0]} vs {names[1]}", names=names,
                  block_size=block_size, tile_size=tile_size, synthetic_chunk=synthetic_chunk,
                  budget=budget, resident=resident, mesh=mesh)
  if metric == "l2":
    values, index, _, _, ran = _kernel_search(queries, references, kernel_k, "l2", **settings)
    distances, index = _nearest_exactly(queries, references, index, k)
    return SearchResult(values=distances, indices=index,
                        zero_variance_synthetic=np.zeros(0, np.int64),
                        zero_variance_train=np.zeros(0, np.int64), precision="float32",
                        num_devices=ran.num_devices, metric=metric)
  values, index, query_status, reference_status, ran, bound = _kernel_search(
      queries, references, kernel_k, "correlation", **settings)
  searched_again = 0
  if refine:
    values, index, searched_again = _exact_top_k(queries, references, values, index, k,
                                                 bound, settings)
  elif kernel_k < k:
    values, index = streaming.merge_candidates(values, index, k)  # pads with NaN and -1
  no_correlation = query_status != kernels.OK
  values[no_correlation] = np.nan
  index[no_correlation] = -1
  return SearchResult(
      values=values, indices=index,
      zero_variance_synthetic=np.flatnonzero(query_status == kernels.ZERO_VARIANCE),
      zero_variance_train=np.flatnonzero(reference_status == kernels.ZERO_VARIANCE),
      precision=ran.precision, num_devices=ran.num_devices, metric="correlation",
      searched_again=searched_again)


@dataclasses.dataclass(frozen=True)
class _Ran:
  """What ran: the products and the number of devices."""
  precision: str
  num_devices: int


def _kernel_search(queries, references, kernel_k, metric, *, precision, exclude, progress,
                   description, names, block_size, tile_size, synthetic_chunk, budget, resident,
                   mesh):
  """The kernels' pass: each query's kernel_k best candidates by the kernel's scores.

  Returns the kernel's values and indices, the query and reference statuses, what ran, and (for
  "correlation") `score_error_bound` of the kernel's scores.
  """
  image_size = int(np.prod(references.shape))
  itemsize = max(streaming.transfer_dtype(queries).itemsize,
                 streaming.transfer_dtype(references).itemsize)
  if metric == "correlation" and pieces.needs_pieces(image_size, itemsize,
                                                     parallel.mesh_size(mesh), budget):
    values, index, query_status, reference_status, piece = pieces.search_in_pieces(
        queries, references, kernel_k, budget, mesh.devices.flat[0], exclude=exclude,
        progress=progress, description=description, names=names)
    # Each piece's float32 product is summed in float64: the rounding of one piece's sum.
    bound = score_error_bound(piece, 1.0, "float32")
    return values, index, query_status, reference_status, _Ran("float32", 1), bound
  plan = kernels.plan_search(len(queries), len(references), image_size, kernel_k,
                             parallel.mesh_size(mesh), block_size=block_size,
                             tile_size=tile_size, synthetic_chunk=synthetic_chunk, budget=budget)
  if resident is None:
    resident = (plan.num_synthetic_chunks > 1 and streaming.device_bytes(
        plan, streaming.transfer_dtype(references)) <= budget.resident_bytes)
  settings = dict(precision=precision, metric=metric, exclude=exclude, progress=progress,
                  description=description, names=names, staging=budget.staging,
                  resident=resident, read_ahead=queries is not references)
  values, index, query_status, reference_status, error_scale = streaming.stream(
      queries, references, plan, mesh, **settings)
  ran = _Ran(precision, plan.num_devices)
  if metric == "l2":
    return values, index, query_status, reference_status, ran
  values, index, recentred_scale = _recentred(queries, references, values, index,
                                              reference_status, plan, mesh, budget, kernel_k,
                                              settings)
  bound = score_error_bound(image_size, max(error_scale, recentred_scale), precision)
  return values, index, query_status, reference_status, ran, bound


def score_error_bound(image_size: int, error_scale: float, precision: str) -> float:
  """How far a kernel's correlation score can be from the float64 value, at most.

  A float32 sum of n products, accumulated in any order (XLA's and BLAS's blocked, FMA-fused
  orders included), is within gamma_n = n u / (1 - n u) (u = 2^-24) of sum_i |a_i b_i| of the
  exact sum (Higham, Accuracy and Stability of Numerical Algorithms, section 3.1). The kernel's
  products are of a unit, centred query row and a reference row t scaled by 1 / |t - mean(t)|,
  so sum_i |a_i b_i| <= |t| / |t - mean(t)| (Cauchy-Schwarz): the error scale, 1 for a centred
  row and sqrt(1 + (mean / std)^2) for a raw one (at most 32 by kernels._MAX_OFFSET_RATIO). The
  mean correction, the normalizations and the query row's own rounding add a few u more, and
  split bfloat16 products drop terms below 2^-16 of each operand (3 x 2^-16 of the sum); the
  bound doubles the sum of these terms and adds 1e-7. It is a worst case: the errors seen are
  about sqrt(n) u, hundreds of times smaller.
  """
  unit = 2.0 ** -24
  terms = image_size + 16
  gamma = terms * unit / (1 - terms * unit)
  split = 3 * 2.0 ** -16 if precision == "bfloat16x3" else 0.0
  return 2 * (gamma + split) * max(error_scale, 1.0) + 1e-7


def _exact_top_k(queries, references, values, index, k, bound, settings):
  """Each query's k best candidates by float64 value, proven to be the k best of all references.

  `values` and `index` are the kernel's candidates (best first by its scores). Candidates are
  rescored in float64 best first: the first k + FIRST_RESCORED, then the rest of the queries whose
  proof needs them. Any reference not rescored scored at most the kernel score of the first
  candidate not rescored (of the last candidate, once all are), so a query is proven once its
  k-th float64 value beats that score by `bound`, or once every usable reference was rescored. A query not proven by all of its kernel's candidates is searched again
  with four times as many. Returns values, indices (N, k) and how many queries were searched
  again.
  """
  count = len(queries)
  exact_values = np.full((count, k), np.nan)
  exact_index = np.full((count, k), -1, np.int64)
  pending = np.arange(count)
  current = queries
  searched_again = np.zeros(count, bool)
  while True:
    kernel_k = values.shape[1]
    first = min(k + FIRST_RESCORED, kernel_k)
    rescored = np.full(values.shape, np.nan)
    rescored[:, :first] = rescore(current, references, index[:, :first])
    proven = _proven(values, index, rescored, first, k, bound, len(references))
    more = np.flatnonzero(~proven)
    if more.size and first < kernel_k:
      rescored[more, first:] = rescore(sources_lib.IndexedSource(current, more), references,
                                       index[more, first:])
      proven[more] = _proven(values[more], index[more], rescored[more], kernel_k, k, bound,
                             len(references))
    order = np.lexsort((np.where(index >= 0, index, np.iinfo(np.int64).max),
                        -np.nan_to_num(rescored, nan=-np.inf)), axis=1)[:, :k]
    best = np.take_along_axis(rescored, order, axis=1)
    best_index = np.take_along_axis(np.asarray(index, np.int64), order, axis=1)
    kept = best.shape[1]
    exact_values[pending, :kept] = best
    exact_index[pending, :kept] = np.where(np.isnan(best), -1, best_index)
    if proven.all():
      return exact_values, exact_index, int(searched_again.sum())
    pending = pending[~proven]
    searched_again[pending] = True
    current = sources_lib.IndexedSource(queries, pending)
    exclude = settings["exclude"]
    subset_settings = {**settings, "exclude": None if exclude is None else exclude[pending],
                       "description": f"{settings['description']} (more candidates)",
                       "synthetic_chunk": None}
    values, index, *_ = _kernel_search(current, references,
                                       min(4 * kernel_k, len(references)), "correlation",
                                       **subset_settings)


def _proven(values, index, rescored, rescored_columns, k, bound, num_references):
  """Which rows' k best float64 values (among the first `rescored_columns` candidates) are the
  k best of all references (see `_exact_top_k`).

  A reference not rescored is either a later candidate, whose kernel score is at most the first
  one not rescored, or no candidate at all, whose kernel score is at most the last candidate's.
  """
  kernel_k = values.shape[1]
  slot = min(rescored_columns, kernel_k - 1)
  next_score = values[:, slot].astype(np.float64)
  # No kernel score in that slot: every usable reference is among those rescored.
  complete = ~np.isfinite(next_score) | (index[:, slot] < 0)
  if rescored_columns == kernel_k and kernel_k >= num_references:
    complete[:] = True
  if k > rescored_columns:
    return complete
  kth = -np.sort(-np.nan_to_num(rescored[:, :rescored_columns], nan=-np.inf), axis=1)[:, k - 1]
  return complete | (kth > next_score + bound)


def rescore(queries: sources_lib.ImageSource, references: sources_lib.ImageSource,
            candidates: np.ndarray) -> np.ndarray:
  """The float64 Pearson correlation of each query with each of its candidates (N, c); NaN
  where the candidate is -1 or either image has zero variance.

  Rows are read from the sources once per chunk of queries (at most _EXACT_BYTES of float64 at
  once). Pixels that float32 holds exactly (8- and 16-bit, float16, float32) are exact in
  float64 and are centred there; wider ones are first shifted and scaled so that any finite
  input keeps its texture (`streaming.shifted_rows_float64`). Images too large for a chunk are
  rescored pair by pair, piece by piece. An exact copy scores exactly 1.
  """
  count, width = candidates.shape
  out = np.full((count, width), np.nan)
  row_size = int(np.prod(references.shape))
  if 8 * row_size * 2 > _EXACT_BYTES:  # huge images: a pair at a time, in pixel pieces
    for row in range(count):
      query = queries.read(row, row + 1, dtype=None)
      for column in np.flatnonzero(candidates[row] >= 0):
        match = int(candidates[row, column])
        out[row, column] = pieces.exact_correlation(query,
                                                    references.read(match, match + 1, dtype=None))
    return out
  # Chunks are read here, one at a time, and scored by a pool of threads (numpy's conversions and
  # products release the GIL), one chunk per thread in flight and one read ahead.
  threads = _rescoring_threads()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    pending = collections.deque()
    for chunk in _candidate_rows(queries, references, candidates, dtype=None):
      pending.append(pool.submit(_rescore_chunk, *chunk))
      if len(pending) > threads:
        _store(out, *pending.popleft().result())
    while pending:
      _store(out, *pending.popleft().result())
  out[candidates < 0] = np.nan
  out[~np.isfinite(out)] = np.nan  # zero variance: no correlation
  return np.clip(out, -1.0, 1.0)


def _rescoring_threads() -> int:
  """Threads that rescore: the host's cores, at most 8."""
  return max(1, min(8, os.cpu_count() or 1))


_scratch = threading.local()  # each rescoring thread's float64 rows, reused from chunk to chunk


def _scratch_rows(name: str, count: int, size: int) -> np.ndarray:
  """This thread's float64 buffer `name` of (count, size), grown when needed: a chunk's rows
  land in pages already touched (fresh pages cost a fault and a zeroing each)."""
  buffer = getattr(_scratch, name, None)
  if buffer is None or buffer.shape[1] != size or buffer.shape[0] < count:
    buffer = np.empty((count, size))
    setattr(_scratch, name, buffer)
  return buffer[:count]


def _rescore_chunk(start, chunk, query_images, reference_images, positions):
  """Float64 correlations of one chunk's pairs: (start, pair rows, pair columns, values)."""
  size = int(np.prod(query_images.shape[1:]))
  query_rows, query_norms = _centred_rows(
      query_images, _scratch_rows("queries", len(query_images), size))
  reference_rows, reference_norms = _centred_rows(
      reference_images, _scratch_rows("references", len(reference_images), size))
  pair_query, pair_column = np.nonzero(chunk >= 0)
  pair_reference = positions[pair_query, pair_column]
  values = np.empty(pair_query.size)
  pairs = min(_PAIRS_AT_ONCE, pair_query.size)
  gathered = (_scratch_rows("pair_queries", pairs, size),
              _scratch_rows("pair_references", pairs, size))
  for first in range(0, pair_query.size, _PAIRS_AT_ONCE):
    part = slice(first, first + _PAIRS_AT_ONCE)
    count = len(pair_query[part])
    pair_queries, pair_references = gathered[0][:count], gathered[1][:count]
    np.take(query_rows, pair_query[part], axis=0, out=pair_queries)
    np.take(reference_rows, pair_reference[part], axis=0, out=pair_references)
    values[part] = np.einsum("ij,ij->i", pair_queries, pair_references)
  with np.errstate(invalid="ignore", divide="ignore"):
    values /= query_norms[pair_query] * reference_norms[pair_reference]
  # r(x, x) = 1: a copy scores exactly 1, not 1 less the float64 sum's last bit.
  for pair in np.flatnonzero(values >= 1 - 1e-12):
    if np.array_equal(reference_rows[pair_reference[pair]], query_rows[pair_query[pair]]):
      values[pair] = 1.0
  return start, pair_query, pair_column, values


def _store(out, start, pair_query, pair_column, values):
  out[start + pair_query, pair_column] = values


def _candidate_rows(queries, references, candidates, dtype):
  """Yields (start, candidates[start:stop], query images [start, stop), the candidates' images
  (each read once, in index order), each candidate's position among them), for chunks of
  queries small enough that one per rescoring thread and one more hold at most _EXACT_BYTES of
  float64 rows."""
  count, width = candidates.shape
  row_size = int(np.prod(references.shape))
  # The rescoring's threads each hold a chunk, and the reader one more: together _EXACT_BYTES.
  step = max(1, _EXACT_BYTES // (_rescoring_threads() + 1) // (8 * row_size * (width + 1)))
  for start in range(0, count, step):
    stop = min(start + step, count)
    chunk = candidates[start:stop]
    needed = np.unique(chunk[chunk >= 0])
    if not needed.size:
      continue
    yield (start, chunk, queries.read(start, stop, dtype=dtype),
           sources_lib.IndexedSource(references, needed).read(0, needed.size, dtype=dtype),
           np.searchsorted(needed, np.maximum(chunk, 0)))


def _centred_rows(images: np.ndarray, out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Rows (N, size) in float64 minus their means, and their norms (0 for a constant row); into
  `out` (N, size) float64 where given."""
  if np.dtype(images.dtype) in streaming.NARROW_DTYPES:
    if out is None:
      rows = images.reshape(len(images), -1).astype(np.float64)
    else:
      rows = out
      np.copyto(rows, images.reshape(len(images), -1), casting="unsafe")
  else:
    rows = streaming.shifted_rows_float64(images)
  rows -= rows.mean(axis=1, keepdims=True)
  norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
  return rows, norms


def _recentred(queries, references, values, index, reference_status, plan, mesh, budget,
               kernel_k, settings):
  """Searches again, centred first, the references that a raw product cannot score exactly
  (large offset under little texture: status RECENTRE), and merges them in."""
  recentre = np.flatnonzero(reference_status == kernels.RECENTRE)
  if not recentre.size:
    return values, index, 0.0
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
  subset_values, subset_index, _, subset_status, error_scale = streaming.stream(
      queries, subset, subset_plan, mesh, centred=True, **subset_settings)
  reference_status[recentre] = subset_status
  subset_index = np.where(subset_index >= 0, recentre[np.maximum(subset_index, 0)], -1)
  values, index = streaming.merge_candidates(np.concatenate([values, subset_values], axis=1),
                                             np.concatenate([index, subset_index], axis=1),
                                             kernel_k)
  return values, index, error_scale


def _nearest_exactly(queries: sources_lib.ImageSource, references: sources_lib.ImageSource,
                     candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k nearest of each query's candidates by float64 distance formed directly, then index.

  The candidates' rows are read once per chunk of queries (at most _EXACT_BYTES at once).
  """
  squared = np.full(candidates.shape, np.inf)
  for start, chunk, query_rows, reference_rows, positions in _candidate_rows(
      queries, references, candidates, dtype=np.float64):
    query_rows = query_rows.reshape(len(chunk), -1)
    reference_rows = reference_rows.reshape(len(reference_rows), -1)
    for i in range(len(chunk)):
      difference = query_rows[i][None, :] - reference_rows[positions[i]]
      squared[start + i] = np.einsum("ij,ij->i", difference, difference)
  squared[candidates < 0] = np.inf
  sort_index = np.where(candidates >= 0, candidates, np.iinfo(np.int64).max)
  order = np.lexsort((sort_index, squared), axis=1)[:, :k]
  distances = np.sqrt(np.take_along_axis(squared, order, axis=1))
  index = np.take_along_axis(candidates, order, axis=1)
  index[~np.isfinite(distances)] = -1
  return distances, index
