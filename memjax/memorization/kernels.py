"""The search's kernels: how the work is cut (budgets, plans) and what runs on the devices.

Every search (`search.search`) runs these: a jitted normalization of the query rows, and one
jitted, sharded (`jax.shard_map`) step per streamed block of reference rows that scores the block
tile by tile and keeps a running exact top-k per device. The metric is a compile-time choice:

* "correlation": Pearson correlation, the product of mean-centred unit rows (see `_tile_top_k`);
  float32 or split bfloat16 products (`precision`).
* "l2": the Euclidean distance, ranked by 2 q.r - |r|^2 (the nearest reference scores highest);
  float32 products. The candidates are rescored exactly in float64 afterwards (search.py).

An optional `exclude` index per query removes one reference from its candidates (a set searched
against itself leaves each image out of its own neighbours).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from memjax import parallel

METRICS = ("correlation", "l2")

GROUP_SIZE = 64  # training images per group in the two-stage exact top-k
TILE_MULTIPLE = 8  # tiles of huge images (3D volumes) may be smaller than a group

# |mean| / std of a training row above which the raw product's rounding could pass 1e-6: such
# rows are searched again with the tile centred first.
_MAX_OFFSET_RATIO = 32.0

# Per-image status codes returned by the kernels.
OK, ZERO_VARIANCE, NON_FINITE, PADDING, RECENTRE = 0, 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class SearchBudget:
  """How much of one device's memory the search may use, and how training blocks reach it.

  tile_bytes: float32 bytes of the largest tile of training rows (at most max_tile_rows rows).
  synthetic_chunk_bytes: float32 bytes of one chunk of synthetic images.
  score_tile_bytes: bytes of one (synthetic chunk x tile) score matrix.
  resident_bytes: a training set whose blocks take at most this many bytes on each device stays
    there after the first synthetic chunk, rather than being read again for every chunk.
  staging: the host memory kind blocks pass through on their way to the device: "pinned_host"
    (page-locked: the copy runs at the bus's speed, asynchronously) or None (a direct copy).
  max_bytes: the most memory the search may hold; images so large that even 8 rows per device
    would not fit are searched in pieces of their pixels instead (pieces.py).
  """
  tile_bytes: int = 32 << 20
  max_tile_rows: int = 4096
  synthetic_chunk_bytes: int = 256 << 20
  score_tile_bytes: int = 64 << 20
  resident_bytes: int = 0
  staging: str | None = None
  max_bytes: int = 2 << 30


# CPUs: tiles that stay in cache-sized pieces, and a training set streamed whatever its size (the
# host's memory is the device's, and the streaming keeps the peak fixed).
CPU_BUDGET = SearchBudget()


def accelerator_budget(memory_bytes: int, staging: str | None = "pinned_host") -> SearchBudget:
  """Sizes for a GPU or TPU with `memory_bytes` of memory per device.

  A bfloat16 matrix unit (tensor cores, the MXU) runs near its peak only on products with
  thousands of rows on each side, and every block is a separate transfer and dispatch: tiles of up
  to 1 GiB (4,096 rows of 256x256 images), synthetic chunks of up to 2 GiB, and a training set
  that fits in a quarter of the memory kept there.
  """
  return SearchBudget(tile_bytes=min(1 << 30, memory_bytes // 32), max_tile_rows=16384,
                      synthetic_chunk_bytes=min(2 << 30, memory_bytes // 32),
                      score_tile_bytes=min(512 << 20, memory_bytes // 64),
                      resident_bytes=memory_bytes // 4, staging=staging,
                      max_bytes=memory_bytes // 2)


def search_budget(mesh: Mesh) -> SearchBudget:
  """The budget for the devices of `mesh`: CPU_BUDGET on CPUs, else from the device's memory."""
  device = mesh.devices.flat[0]
  if device.platform == "cpu":
    return CPU_BUDGET
  stats = device.memory_stats() or {}
  memory = int(stats.get("bytes_limit", 16 << 30))
  kinds = {memory_space.kind for memory_space in device.addressable_memories()}
  return accelerator_budget(memory, "pinned_host" if "pinned_host" in kinds else None)



@dataclasses.dataclass(frozen=True)
class SearchPlan:
  """Shapes of the search; every one is fixed before the first block is read."""
  num_synthetic: int
  num_train: int
  image_size: int  # pixels (times channels) per image
  k: int
  num_devices: int
  tile_size: int  # training rows per tile on one device
  tiles_per_device: int  # tiles per device per block
  block_size: int  # real training images per streamed block
  synthetic_chunk: int  # synthetic images per chunk (padded rows included)

  @property
  def rows_per_device(self) -> int:
    """Training rows per device per block, padding included."""
    return self.tile_size * self.tiles_per_device

  @property
  def real_rows_per_device(self) -> int:
    """Real training images per device in a full block; the rest of its rows are padding."""
    return ceil_div(self.block_size, self.num_devices)

  @property
  def num_synthetic_chunks(self) -> int:
    return ceil_div(self.num_synthetic, self.synthetic_chunk)


def default_tile_size(image_size: int, num_train: int, budget: SearchBudget = CPU_BUDGET) -> int:
  """Training rows per tile, a function of the data and the budget alone (never of the number of
  devices or the block size).

  About budget.tile_bytes of float32 per tile; among the sizes from half that up, the one that
  leaves the least padding in the last tile of a single device's pass; a small set gets one tile.
  """
  largest = min(budget.max_tile_rows, budget.tile_bytes // (4 * image_size))
  unit = GROUP_SIZE if largest >= GROUP_SIZE else TILE_MULTIPLE
  largest = max(unit, largest // unit * unit)
  if num_train <= largest:  # a small training set: one tile that just holds it
    return ceil_div(num_train, unit) * unit
  candidates = range(largest, max(unit, largest // 2) - 1, -unit)
  return min(candidates, key=lambda rows: ceil_div(num_train, rows) * rows - num_train)


def _group_size(tile_size: int) -> int:
  return GROUP_SIZE if tile_size % GROUP_SIZE == 0 else TILE_MULTIPLE


def plan_search(num_synthetic: int, num_train: int, image_size: int, k: int, num_devices: int, *,
                block_size: int | None = None, tile_size: int | None = None,
                synthetic_chunk: int | None = None, budget: SearchBudget = CPU_BUDGET
                ) -> SearchPlan:
  """Chooses tile, block and chunk sizes. Any block size is allowed; blocks are padded."""
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  if num_train < 1 or num_synthetic < 1:
    raise ValueError(
        f"nothing to search: {num_synthetic} synthetic and {num_train} training images")
  if num_train >= 2**31 - 1:
    raise ValueError(f"{num_train} training images: more than the int32 indices the kernel keeps")
  tile = tile_size or default_tile_size(image_size, num_train, budget)
  if tile < TILE_MULTIPLE or tile % TILE_MULTIPLE:
    raise ValueError(f"tile_size must be a positive multiple of {TILE_MULTIPLE}, got {tile}")
  if block_size is None:
    # One tile per device: the next block is read while this one is computed.
    block_size = tile * num_devices
  elif block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}")
  block_size = min(block_size, num_train)
  tiles_per_device = ceil_div(ceil_div(block_size, num_devices), tile)
  if synthetic_chunk is None:
    rows = min(budget.synthetic_chunk_bytes // (4 * image_size),
               budget.score_tile_bytes // (4 * tile))
    rows = max(8, rows // 8 * 8)
    # Equal chunks, rounded up to a multiple of 8 rows: little padding, one shape.
    synthetic_chunk = ceil_div(ceil_div(num_synthetic, ceil_div(num_synthetic, rows)), 8) * 8
  elif synthetic_chunk < 1:
    raise ValueError(f"synthetic_chunk must be positive, got {synthetic_chunk}")
  return SearchPlan(num_synthetic=num_synthetic, num_train=num_train, image_size=image_size, k=k,
                    num_devices=num_devices, tile_size=tile, tiles_per_device=tiles_per_device,
                    block_size=block_size, synthetic_chunk=synthetic_chunk)


def _l2_rows(x: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
  """Query rows for "l2": the rows in float32, no sums, and statuses (OK or NON_FINITE)."""
  x = x.astype(jnp.float32)
  finite = jnp.all(jnp.isfinite(x), axis=1)
  status = jnp.where(finite, OK, NON_FINITE).astype(jnp.int8)
  return (jnp.where(finite[:, None], x, 0.0),), jnp.zeros(x.shape[0], jnp.float32), status


def _normalize_rows(x: jax.Array, precision: str
                    ) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
  """Rows of x as mean-centred unit vectors, ready for the products, their sums, and statuses.

  The operands are (unit,) in float32 or, for "bfloat16x3", (hi, mid): two bfloat16 arrays whose
  sum carries 16 significant bits of each float32 value. The sums are what rounding leaves of a
  zero: the search subtracts them times each training image's mean, which makes an uncentred
  training image exactly as good as a centred one.
  """
  x = x.astype(jnp.float32)
  mean, inverse_norm, status = _row_statistics(x)
  unit = jnp.where((status == OK)[:, None], (x - mean[:, None]) * inverse_norm[:, None], 0.0)
  if precision == "float32":
    return (unit,), jnp.sum(unit, axis=1), status
  hi, mid = _split_bfloat16(unit)
  used = hi.astype(jnp.float32) + mid.astype(jnp.float32)
  return (hi, mid), jnp.sum(used, axis=1), status


def _round_to_bfloat16(x: jax.Array) -> jax.Array:
  """float32 x rounded to the nearest bfloat16 value (ties to even), still as float32.

  Done on the bits, not by a round trip through bfloat16: a compiler that may keep excess
  precision (XLA on GPUs, `xla_allow_excess_precision`) folds `f32(bf16(x))` to x, which would
  make the split below lose its low half. For finite x below bfloat16's largest value.
  """
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  rounded = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1))) & jnp.uint32(0xFFFF0000)
  return lax.bitcast_convert_type(rounded, jnp.float32)


def _split_bfloat16(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x ~ hi + mid in bfloat16, to 16 significant bits (exactly, for 16-bit integers).

  hi and mid are rounded to bfloat16 values on the bits, so that their conversions to bfloat16
  are exact and no compiler rewrite of a conversion pair can change them (see
  `_round_to_bfloat16`); x - hi is exact in float32.
  """
  hi = _round_to_bfloat16(x)
  mid = _round_to_bfloat16(x - hi)
  return hi.astype(jnp.bfloat16), mid.astype(jnp.bfloat16)


def _products(synthetic: tuple[jax.Array, ...], rows: jax.Array) -> jax.Array:
  """synthetic . rows^T with float32 accumulation (num_synthetic, num_rows).

  float32 operands: one product at full precision. bfloat16 operands (hi, mid): the split products
  hi.t_hi + hi.t_mid + mid.t_hi, which run on a bfloat16 matrix unit (AMX, tensor cores, the
  MXU) and drop only terms below 2^-16 of each product; 8-bit pixels are exact in bfloat16, so
  they need two products, not three.
  """
  def product(a, b):
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)

  if len(synthetic) == 1:
    return product(synthetic[0], rows.astype(jnp.float32))
  hi, mid = synthetic
  if rows.dtype in (jnp.uint8, jnp.int8):
    exact = rows.astype(jnp.bfloat16)
    return product(hi, exact) + product(mid, exact)
  rows_hi, rows_mid = _split_bfloat16(rows.astype(jnp.float32))
  return product(hi, rows_hi) + product(hi, rows_mid) + product(mid, rows_hi)


def _row_statistics(x: jax.Array, max_offset_ratio: float | None = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each row's mean, 1 / norm of the centred row (0 where undefined), and status code.

  The mean, then the centred sum of squares (two passes: no cancellation), then the exact test of
  a constant row, max == min (a rounded mean can leave a constant row a tiny variance). x may be
  of any real dtype; the statistics are float32.
  With `max_offset_ratio`, a row whose |mean| / std exceeds it is marked RECENTRE.
  """
  mean = jnp.mean(x, axis=1, dtype=jnp.float32)
  sum_sq = jnp.sum(jnp.square(x.astype(jnp.float32) - mean[:, None]), axis=1)
  finite = jnp.isfinite(mean) & jnp.isfinite(sum_sq)
  constant = jnp.max(x, axis=1) == jnp.min(x, axis=1)
  usable = finite & ~constant & (sum_sq > 0)
  inverse_norm = jnp.where(usable, lax.rsqrt(jnp.where(usable, sum_sq, 1.0)), 0.0)
  status = jnp.where(usable, OK, jnp.where(finite, ZERO_VARIANCE, NON_FINITE))
  if max_offset_ratio is not None:
    offset_ratio = jnp.abs(mean) * inverse_norm * jnp.sqrt(jnp.float32(x.shape[1]))
    status = jnp.where(usable & (offset_ratio > max_offset_ratio), RECENTRE, status)
  return mean, inverse_norm, status.astype(jnp.int8)


def _l2_scores(synthetic: tuple[jax.Array, ...], tile: jax.Array, tile_index: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """2 q.r - |r|^2 for every query q and reference row r (the nearest scores highest); statuses."""
  rows = tile.astype(jnp.float32)
  norms = jnp.sum(jnp.square(rows), axis=1)
  finite = jnp.all(jnp.isfinite(rows), axis=1) & jnp.isfinite(norms)
  status = jnp.where(tile_index < 0, PADDING, jnp.where(finite, OK, NON_FINITE)).astype(jnp.int8)
  scores = 2.0 * _products(synthetic, jnp.where(finite[:, None], rows, 0.0)) - norms[None, :]
  return jnp.where((status == OK)[None, :], scores, -jnp.inf), status


def _correlation_scores(synthetic: tuple[jax.Array, ...], synthetic_sum: jax.Array,
                        tile: jax.Array, tile_index: jax.Array, centred: bool
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pearson correlations of the query rows with one tile of reference rows; statuses; and the
  tile's error scale (see `_tile_top_k`)."""
  raw = not centred and (len(synthetic) == 1 or tile.dtype in (jnp.uint8, jnp.int8))
  mean, inverse_norm, status = _row_statistics(tile, _MAX_OFFSET_RATIO if raw else None)
  status = jnp.where(tile_index < 0, jnp.int8(PADDING), status)
  if not raw:
    products = _products(synthetic, tile.astype(jnp.float32) - mean[:, None])
    error_scale = jnp.float32(1.0)
  else:
    products = _products(synthetic, tile) - synthetic_sum[:, None] * mean[None, :]
    # |t| / |t - mean(t)| of the rows scored: what the raw product's rounding is relative to.
    ratio = jnp.abs(mean) * inverse_norm * jnp.sqrt(jnp.float32(tile.shape[1]))
    error_scale = jnp.max(jnp.where(status == OK, jnp.sqrt(1.0 + jnp.square(ratio)), 1.0))
  scores = products * inverse_norm[None, :]
  # Rounding can take an exact copy a hair past 1; a correlation never is.
  scores = jnp.where((status == OK)[None, :], jnp.clip(scores, -1.0, 1.0), -jnp.inf)
  return scores, status, error_scale


def _tile_top_k(synthetic: tuple[jax.Array, ...], synthetic_sum: jax.Array, tile: jax.Array,
                tile_index: jax.Array, k: int, centred: bool, metric: str = "correlation",
                exclude: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact top-k over one tile of training rows; ties go to the lower training index.

  Float32 products and bfloat16 products of 8-bit pixels run on the raw training pixels: with u
  a centred unit synthetic vector, u . (t - mean(t)) = u . t - sum(u) mean(t), so the tile is
  read, never rewritten. That product's rounding grows with |mean| / std of a training row (about
  3e-8 times the ratio in float32), so rows past _MAX_OFFSET_RATIO are left out here (status
  RECENTRE) and searched again by the `centred` variant. Split bfloat16 products of wider pixels
  carry 16 bits of each value, too few for an uncentred row: their tile is centred first, in the
  float32 copy that the split makes anyway.
  The "l2" metric scores 2 q.r - |r|^2 instead (`_l2_scores`). With `exclude` (one reference
  index per query, -1 for none) that reference is left out of the query's candidates.
  Returns values and training indices (num_synthetic, min(k, tile rows)), the tile's statuses,
  and its error scale: the largest |t| / |t - mean(t)| of its scored rows (1 for a centred tile,
  0 for "l2"), which bounds the products' rounding relative to 1 (`search.score_error_bound`).
  """
  if metric == "l2":
    scores, status = _l2_scores(synthetic, tile, tile_index)
    error_scale = jnp.float32(0.0)
  else:
    scores, status, error_scale = _correlation_scores(synthetic, synthetic_sum, tile,
                                                      tile_index, centred)
  if exclude is not None:  # each query's own reference is no candidate
    scores = jnp.where(tile_index[None, :] == exclude[:, None], -jnp.inf, scores)
  num_synthetic, rows = scores.shape
  group_size = _group_size(rows)
  num_groups = rows // group_size
  grouped = scores.reshape(num_synthetic, num_groups, group_size)
  # Every one of the k best elements lies in one of the k best groups ranked by their maxima (ties
  # to the lower group), so an exact top-k over those groups' members is the exact answer.
  num_best_groups = min(k, num_groups)
  _, best_groups = lax.top_k(jnp.max(grouped, axis=2), num_best_groups)
  best_groups = jnp.sort(best_groups, axis=1)  # members in training order, for the tie rule
  candidates = jnp.take_along_axis(grouped, best_groups[:, :, None], axis=1)
  candidates = candidates.reshape(num_synthetic, num_best_groups * group_size)
  candidate_index = tile_index.reshape(num_groups, group_size)[best_groups]
  candidate_index = candidate_index.reshape(num_synthetic, num_best_groups * group_size)
  values, positions = lax.top_k(candidates, min(k, num_best_groups * group_size))
  return (values, jnp.take_along_axis(candidate_index, positions, axis=1), status,
          jnp.asarray(error_scale, jnp.float32))


def _merge_top_k(values_a, index_a, values_b, index_b, k):
  """Top-k of two candidate lists; on ties the first list wins (it holds the lower indices)."""
  values = jnp.concatenate([values_a, values_b], axis=1)
  index = jnp.concatenate([index_a, index_b], axis=1)
  values, positions = lax.top_k(values, k)
  return values, jnp.take_along_axis(index, positions, axis=1)


@functools.lru_cache(maxsize=32)
def compile_kernels(mesh: Mesh, plan: SearchPlan, centred: bool, precision: str,
                    metric: str = "correlation", excluding: bool = False):
  """The jitted kernels for one mesh and one plan: normalize query rows, and one block step.

  The block step takes (best values, best indices, query operands, query sums, block, block
  indices) and, with `excluding`, each query's excluded reference index last; it returns the new
  best values and indices, the block's statuses and each device's error scale (`_tile_top_k`).
  """
  rows = PartitionSpec(mesh.axis_names)
  replicated = parallel.replicated(mesh)
  k, tile = plan.k, plan.tile_size

  @functools.partial(jax.jit, out_shardings=replicated)
  def normalize_synthetic(chunk):
    flat = chunk.reshape(chunk.shape[0], -1)
    return _l2_rows(flat) if metric == "l2" else _normalize_rows(flat, precision)

  def local_block(best_values, best_index, synthetic, synthetic_sum, block, block_index,
                  exclude=None):
    tiles = block.reshape(plan.tiles_per_device, tile, -1)
    tile_indices = block_index.reshape(plan.tiles_per_device, tile)

    def scan_tile(carry, xs):
      tile_rows, tile_index = xs
      values, index, status, error_scale = _tile_top_k(
          synthetic, synthetic_sum, tile_rows, tile_index, k, centred, metric, exclude)
      return _merge_top_k(*carry, values, index, k), (status, error_scale)

    carry = (best_values[0], best_index[0])
    if plan.tiles_per_device == 1:  # the default: no loop to compile
      carry, (status, error_scale) = scan_tile(carry, (tiles[0], tile_indices[0]))
    else:
      carry, (status, error_scale) = lax.scan(scan_tile, carry, (tiles, tile_indices))
    values, index = carry
    return values[None], index[None], status.reshape(-1), jnp.max(error_scale).reshape(1)

  in_specs = (rows, rows, PartitionSpec(), PartitionSpec(), rows, rows)
  if excluding:
    in_specs += (PartitionSpec(),)
  sharded_block = jax.shard_map(local_block, mesh=mesh, in_specs=in_specs,
                                out_specs=(rows, rows, rows, rows))
  block_step = jax.jit(sharded_block, donate_argnums=(0, 1))
  return normalize_synthetic, block_step


def ceil_div(a: int, b: int) -> int:
  return -(-a // b)
