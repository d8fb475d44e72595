"""The exact, streaming, sharded top-k Pearson correlation search.

For every synthetic image, the k training images it correlates with most, over all pixels or voxels
and channels (Akbar, Wang & Eklund 2025). Pearson correlation is the dot product of the two images'
flattened, mean-centred, unit-norm vectors, so the search is a matrix product followed by a top-k:

* The training set streams through device memory in blocks. A background thread reads block j+1
  from its source (folder, .npy, array) while the devices compute block j (and another reads the
  next synthetic chunk); each block is split by rows over every device of the mesh, and each
  device keeps a running top-k of its rows. Only two blocks are ever in flight, so peak memory
  does not grow with the training set.
* Pixels travel in their stored dtype (uint8 images move 4x fewer bytes than float32). The
  synthetic images are centred and normalized on the device; the training tile is never rewritten:
  its mean and norm are applied to the products (see `_tile_top_k`).
* The products run in float32, or as split bfloat16 products on the machine's bfloat16 matrix
  unit (AMX, tensor cores, the MXU), which carry 16 significant bits of every value (8-bit pixels
  exactly) and stay within a few 1e-6 of float32 and 1e-5 of float64: `precision="auto"` picks
  them where they are fast and a probe search on that kind of device has proven them exact. The
  split is rounded on the bits, so that no compiler rewrite of a conversion pair (XLA on GPUs
  keeps excess precision) can take its low half away.
* Matches within REFINE_BAND of 1, where "copy" or "nearly" is the verdict, are rescored in
  float64 (as faiss's IndexRefine reranks): an exact copy scores 1.
* How much goes to a device at once is a `SearchBudget`: cache-sized tiles on CPUs; on GPUs and
  TPUs tiles and chunks of thousands of rows for the matrix units, blocks staged through pinned
  host memory, and a training set that fits kept on the device across synthetic chunks.
* Each device works through its rows in tiles of a fixed shape (`tile_size` rows). A matrix
  product's rounding depends on its shapes, so fixed tiles make every correlation bitwise the same
  whatever the block size or the number of devices. (The tile size follows from the training set's
  size and shape, the synthetic chunk from the synthetic set's; the last bit of a value can change
  with those, never with the layout of the work.)
* Per tile, the top-k is found exactly without sorting the whole score tile: the maximum of each
  group of 64 consecutive training images first (a cheap vectorized reduction), then an exact top-k
  over the members of the k best groups. Ties go to the lower training index.
* An image with zero variance (or a non-finite pixel) has no correlation: a synthetic one gets NaN
  values and index -1, a training one is never matched, and both are reported.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from memjax import parallel
from memjax.data import sources as sources_lib

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
  """
  tile_bytes: int = 32 << 20
  max_tile_rows: int = 4096
  synthetic_chunk_bytes: int = 256 << 20
  score_tile_bytes: int = 64 << 20
  resident_bytes: int = 0
  staging: str | None = None


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
                      resident_bytes=memory_bytes // 4, staging=staging)


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
class SearchResult:
  """The outcome of a search.

  values: (N_synthetic, k) float32, descending; NaN where no correlation is defined (a synthetic
    image with zero variance, or fewer than k training images with nonzero variance).
  indices: (N_synthetic, k) int64 into the training set; -1 where values is NaN.
  zero_variance_synthetic, zero_variance_train: indices of the images that have no correlation.
  """
  values: np.ndarray
  indices: np.ndarray
  zero_variance_synthetic: np.ndarray
  zero_variance_train: np.ndarray
  precision: str = "float32"  # the products used: "float32" or "bfloat16x3"
  num_devices: int = 1


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
    return _ceil_div(self.block_size, self.num_devices)

  @property
  def num_synthetic_chunks(self) -> int:
    return _ceil_div(self.num_synthetic, self.synthetic_chunk)


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
    return _ceil_div(num_train, unit) * unit
  candidates = range(largest, max(unit, largest // 2) - 1, -unit)
  return min(candidates, key=lambda rows: _ceil_div(num_train, rows) * rows - num_train)


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
  tiles_per_device = _ceil_div(_ceil_div(block_size, num_devices), tile)
  if synthetic_chunk is None:
    rows = min(budget.synthetic_chunk_bytes // (4 * image_size),
               budget.score_tile_bytes // (4 * tile))
    rows = max(8, rows // 8 * 8)
    # Equal chunks, rounded up to a multiple of 8 rows: little padding, one shape.
    synthetic_chunk = _ceil_div(_ceil_div(num_synthetic, _ceil_div(num_synthetic, rows)), 8) * 8
  elif synthetic_chunk < 1:
    raise ValueError(f"synthetic_chunk must be positive, got {synthetic_chunk}")
  return SearchPlan(num_synthetic=num_synthetic, num_train=num_train, image_size=image_size, k=k,
                    num_devices=num_devices, tile_size=tile, tiles_per_device=tiles_per_device,
                    block_size=block_size, synthetic_chunk=synthetic_chunk)


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


def _tile_top_k(synthetic: tuple[jax.Array, ...], synthetic_sum: jax.Array, tile: jax.Array,
                tile_index: jax.Array, k: int, centred: bool
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact top-k over one tile of training rows; ties go to the lower training index.

  Float32 products and bfloat16 products of 8-bit pixels run on the raw training pixels: with u
  a centred unit synthetic vector, u . (t - mean(t)) = u . t - sum(u) mean(t), so the tile is
  read, never rewritten. That product's rounding grows with |mean| / std of a training row (about
  3e-8 times the ratio in float32), so rows past _MAX_OFFSET_RATIO are left out here (status
  RECENTRE) and searched again by the `centred` variant. Split bfloat16 products of wider pixels
  carry 16 bits of each value, too few for an uncentred row: their tile is centred first, in the
  float32 copy that the split makes anyway.
  Returns values and training indices (num_synthetic, min(k, tile rows)) and the tile's statuses.
  """
  raw = not centred and (len(synthetic) == 1 or tile.dtype in (jnp.uint8, jnp.int8))
  mean, inverse_norm, status = _row_statistics(tile, _MAX_OFFSET_RATIO if raw else None)
  status = jnp.where(tile_index < 0, jnp.int8(PADDING), status)
  if not raw:
    products = _products(synthetic, tile.astype(jnp.float32) - mean[:, None])
  else:
    products = _products(synthetic, tile) - synthetic_sum[:, None] * mean[None, :]
  scores = products * inverse_norm[None, :]
  # Rounding can take an exact copy a hair past 1; a correlation never is.
  scores = jnp.where((status == OK)[None, :], jnp.clip(scores, -1.0, 1.0), -jnp.inf)
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
  return values, jnp.take_along_axis(candidate_index, positions, axis=1), status


def _merge_top_k(values_a, index_a, values_b, index_b, k):
  """Top-k of two candidate lists; on ties the first list wins (it holds the lower indices)."""
  values = jnp.concatenate([values_a, values_b], axis=1)
  index = jnp.concatenate([index_a, index_b], axis=1)
  values, positions = lax.top_k(values, k)
  return values, jnp.take_along_axis(index, positions, axis=1)


@functools.lru_cache(maxsize=32)
def _compile_kernels(mesh: Mesh, plan: SearchPlan, centred: bool, precision: str):
  """The jitted kernels for one mesh and one plan: normalize synthetic rows, and one block step."""
  rows = PartitionSpec(mesh.axis_names)
  replicated = parallel.replicated(mesh)
  k, tile = plan.k, plan.tile_size

  @functools.partial(jax.jit, out_shardings=replicated)
  def normalize_synthetic(chunk):
    return _normalize_rows(chunk.reshape(chunk.shape[0], -1), precision)

  def local_block(best_values, best_index, synthetic, synthetic_sum, block, block_index):
    tiles = block.reshape(plan.tiles_per_device, tile, -1)
    tile_indices = block_index.reshape(plan.tiles_per_device, tile)

    def scan_tile(carry, xs):
      tile_rows, tile_index = xs
      values, index, status = _tile_top_k(synthetic, synthetic_sum, tile_rows, tile_index, k,
                                          centred)
      return _merge_top_k(*carry, values, index, k), status

    carry = (best_values[0], best_index[0])
    if plan.tiles_per_device == 1:  # the default: no loop to compile
      carry, status = scan_tile(carry, (tiles[0], tile_indices[0]))
    else:
      carry, status = lax.scan(scan_tile, carry, (tiles, tile_indices))
    values, index = carry
    return values[None], index[None], status.reshape(-1)

  sharded_block = jax.shard_map(
      local_block, mesh=mesh,
      in_specs=(rows, rows, PartitionSpec(), PartitionSpec(), rows, rows),
      out_specs=(rows, rows, rows))
  block_step = jax.jit(sharded_block, donate_argnums=(0, 1))
  return normalize_synthetic, block_step


class _BlockReader:
  """Reads training blocks in a background thread, one ahead of the devices.

  Each block is laid out for the mesh: device d holds real training images
  [start + d * r, start + (d + 1) * r) (r = real rows per device) followed by zero padding, with
  the matching index vector (-1 for padding). Built with `make_array_from_callback`, so on several
  hosts each process reads only the rows of its own devices.

  Rows are read into a ring of 64-byte aligned host buffers, which the CPU backend adopts without a
  copy and which are reused rather than freshly allocated (fresh pages fault in at about the speed
  of a copy). A buffer is refilled three blocks later: by then the search has waited for its block.
  An aligned in-memory array of the stored dtype is not copied at all. With `keep` (blocks that
  stay on the device for later passes) every block gets buffers of its own.

  With `staging` ("pinned_host"), a block is first placed in page-locked host memory and then
  copied to the devices from there: an asynchronous copy at the bus's speed, which overlaps the
  kernel of the block before (a copy from ordinary, pageable memory runs at a fraction of it).
  """

  RING = 3  # block b's buffers are rewritten for block b + 3; the search keeps <= 2 in flight

  def __init__(self, train: sources_lib.ImageSource, plan: SearchPlan, mesh: Mesh,
               dtype: np.dtype, *, staging: str | None = None, keep: bool = False):
    self._train = train
    self._plan = plan
    self._sharding = parallel.rows_sharding(mesh)
    self._host_sharding = (parallel.rows_sharding(mesh, memory_kind=staging) if staging
                           else self._sharding)
    self._staged = staging is not None
    self._keep = keep
    self._dtype = np.dtype(dtype)
    self._buffers: dict[tuple[int, int], np.ndarray] = {}
    self._blocks_read = 0
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="memjax-reader")

  def _device_rows(self, start: int, stop: int, device_slot: int) -> tuple[int, int]:
    real = self._plan.real_rows_per_device
    first = min(start + device_slot * real, stop)
    return first, min(first + real, stop)

  def _buffer(self, ring_slot: int, device_slot: int) -> np.ndarray:
    shape = (self._plan.rows_per_device, self._plan.image_size)
    if self._keep:
      return sources_lib.aligned_empty(shape, self._dtype)
    key = (ring_slot, device_slot)
    if key not in self._buffers:
      self._buffers[key] = sources_lib.aligned_empty(shape, self._dtype)
    return self._buffers[key]

  def _without_copy(self, first: int, last: int) -> np.ndarray | None:
    """The rows as a view of an in-memory array, where the device can adopt it as it is."""
    if (not isinstance(self._train, sources_lib.ArraySource)
        or last - first != self._plan.rows_per_device or self._train.dtype != self._dtype):
      return None
    rows = self._train.view(first, last)
    if rows.dtype != self._dtype or not rows.flags.c_contiguous or rows.ctypes.data % 64:
      return None  # e.g. big-endian, strided or 16-byte aligned: read into a buffer instead
    return rows.reshape(last - first, -1)

  def _read(self, start: int, stop: int, ring_slot: int) -> tuple[jax.Array, jax.Array]:
    plan = self._plan
    per_device = plan.rows_per_device
    total_rows = per_device * plan.num_devices

    def slot_of(index) -> int:
      return (index[0].start or 0) // per_device

    def block_callback(index):
      device_slot = slot_of(index)
      first, last = self._device_rows(start, stop, device_slot)
      rows = self._without_copy(first, last)
      if rows is not None:
        return rows
      out = self._buffer(ring_slot, device_slot)
      self._train.read_into(first, last, out[:last - first].reshape(
          (last - first,) + tuple(self._train.shape)))
      out[last - first:] = 0
      return out

    def index_callback(index):
      first, last = self._device_rows(start, stop, slot_of(index))
      out = np.full((per_device,), -1, np.int32)
      out[:last - first] = np.arange(first, last, dtype=np.int32)
      return out

    block = jax.make_array_from_callback((total_rows, plan.image_size), self._host_sharding,
                                         block_callback)
    block_index = jax.make_array_from_callback((total_rows,), self._sharding, index_callback)
    if self._staged:
      block = jax.device_put(block, self._sharding)
    return block, block_index

  def _submit(self, start: int, stop: int):
    ring_slot = self._blocks_read % self.RING
    self._blocks_read += 1
    return self._pool.submit(self._read, start, stop, ring_slot)

  def blocks(self):
    """Yields (start, stop, block, block_index) with the next block already being read.

    The caller must have waited for block b - 2 before it asks for block b + 1 (it keeps at most
    two blocks in flight): the ring reuses block b - 2's buffers for block b + 1, so the host
    holds three blocks. Blocks are never donated to the kernel: a block may be a view of the
    caller's array.
    """
    bounds = _bounds(self._plan.num_train, self._plan.block_size)
    for (start, stop), (block, block_index) in zip(bounds, _read_ahead(self._submit, bounds)):
      yield start, stop, block, block_index

  def close(self):
    self._pool.shutdown(wait=True)
    self._buffers.clear()


def _bounds(total: int, step: int) -> list[tuple[int, int]]:
  """[start, stop) of consecutive pieces of `step` items (the last may be shorter)."""
  return [(start, min(start + step, total)) for start in range(0, total, step)]


def _read_ahead(submit, bounds):
  """Yields the results of submit(start, stop) in order, asking for piece i + 1 before piece i is
  handed out: the background thread reads the next piece while the caller works on this one."""
  pending = submit(*bounds[0]) if bounds else None
  for position in range(len(bounds)):
    result = pending.result()
    if position + 1 < len(bounds):
      pending = submit(*bounds[position + 1])
    yield result


class _TrainingPasses:
  """The training blocks for each synthetic chunk: streamed every time, or kept on the devices.

  A kept (resident) training set is read from its source and copied to the devices once, during
  the first synthetic chunk; later chunks reuse the device copies.
  """

  def __init__(self, reader: _BlockReader, resident: bool):
    self._reader = reader
    self._resident = resident
    self._kept: list[tuple[int, int, jax.Array, jax.Array]] | None = None

  def blocks(self):
    if self._kept is not None:
      yield from self._kept
      return
    kept = []
    for item in self._reader.blocks():
      if self._resident:
        kept.append(item)
      yield item
    if self._resident:
      self._kept = kept


class _SyntheticChunks:
  """Synthetic chunks read and copied to the devices in a background thread, one ahead.

  Without `ahead` (the synthetic and training images are one source, which is read by one
  thread at a time) each chunk is read when it is needed.
  """

  def __init__(self, synthetic: sources_lib.ImageSource, plan: SearchPlan, mesh: Mesh,
               ahead: bool = True):
    self._synthetic = synthetic
    self._ahead = ahead
    self._plan = plan
    self._replicated = parallel.replicated(mesh)
    self._dtype = _transfer_dtype(synthetic)
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="memjax-synthetic")

  def _read(self, start: int, stop: int) -> jax.Array:
    count = stop - start
    chunk = sources_lib.aligned_empty((self._plan.synthetic_chunk, self._plan.image_size),
                                      self._dtype)  # fresh: the device may adopt it
    self._synthetic.read_into(start, stop,
                              chunk[:count].reshape((count,) + tuple(self._synthetic.shape)))
    chunk[count:] = 0
    return jax.device_put(chunk, self._replicated)

  def chunks(self):
    """Yields (start, stop, chunk on the devices) with the next chunk already being read."""
    bounds = _bounds(self._plan.num_synthetic, self._plan.synthetic_chunk)
    if self._ahead:
      chunks = _read_ahead(lambda start, stop: self._pool.submit(self._read, start, stop), bounds)
    else:
      chunks = (self._read(start, stop) for start, stop in bounds)
    for (start, stop), chunk in zip(bounds, chunks):
      yield start, stop, chunk

  def close(self):
    self._pool.shutdown(wait=True)


def _transfer_dtype(source: sources_lib.ImageSource) -> np.dtype:
  """The dtype pixels travel in: the stored one when float32 holds it exactly, else float32."""
  dtype = np.dtype(source.dtype)
  if dtype in (np.uint8, np.int8, np.uint16, np.int16, np.float16, np.float32):
    return dtype
  return np.dtype(np.float32)


def _device_major(values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-device candidate lists (devices, N, k) side by side as (N, devices * k)."""
  num_devices, n, per = values.shape
  return (np.moveaxis(values, 0, 1).reshape(n, num_devices * per),
          np.moveaxis(index, 0, 1).reshape(n, num_devices * per))


def _merge_candidates(values: np.ndarray, index: np.ndarray, k: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The k best of each row's candidates, by value descending, then training index ascending.

  Unused slots (-inf or NaN, index -1) sort last and come out as NaN and -1.
  """
  index = index.astype(np.int64)
  usable = np.isfinite(values) & (index >= 0)
  sort_values = np.where(usable, values, -np.inf)
  sort_index = np.where(usable, index, np.iinfo(np.int64).max)
  order = np.lexsort((sort_index, -sort_values), axis=1)[:, :k]
  values = np.take_along_axis(np.where(usable, values, np.nan), order, axis=1)
  index = np.take_along_axis(np.where(usable, index, -1), order, axis=1)
  if values.shape[1] < k:  # fewer candidates than k
    pad = k - values.shape[1]
    values = np.pad(values, ((0, 0), (0, pad)), constant_values=np.nan)
    index = np.pad(index, ((0, 0), (0, pad)), constant_values=-1)
  return values.astype(np.float32), index


PRECISIONS = ("auto", "float32", "bfloat16x3")


def resolve_precision(precision: str, mesh: Mesh) -> str:
  """"auto" becomes "bfloat16x3" where bfloat16 products are fast and proven exact, else "float32".

  Fast: GPUs, TPUs and CPUs with a bfloat16 matrix unit (AMX). Proven: a probe search on that
  kind of device, once per process, agrees with float64 (`split_products_are_exact`).
  """
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  if precision != "auto":
    return precision
  device = mesh.devices.flat[0]
  if device.platform == "cpu" and not _cpu_has_bfloat16_matrix_unit():
    return "float32"
  return "bfloat16x3" if split_products_are_exact(device) else "float32"


_PROVEN: dict[tuple[str, str], bool] = {}
PROBE_TOLERANCE = 5e-6  # largest difference from float64 that the probe accepts
EXACT_COPY_TOLERANCE = 1e-6  # an exact copy must score at least 1 - this


def split_products_are_exact(device: jax.Device) -> bool:
  """Whether "bfloat16x3" searches are exact on this kind of device, found by running one.

  Compilers differ in what they may do to a split product (XLA on GPUs may keep excess
  precision and fold conversions away), so the split is proven where it runs, not assumed: a
  small search with exact and noisy copies of 8-bit and float32 images, compiled for the device
  as every search is, must be within PROBE_TOLERANCE of float64 with exact copies at
  1 - EXACT_COPY_TOLERANCE or more. The answer is kept per platform and device kind.
  """
  key = (device.platform, device.device_kind)
  if key not in _PROVEN:
    worst, weakest_copy = _probe_split_products(device)
    _PROVEN[key] = worst <= PROBE_TOLERANCE and weakest_copy >= 1 - EXACT_COPY_TOLERANCE
    if not _PROVEN[key]:
      logging.warning(
          "bfloat16x3 split products are not exact on %s (%s): %.2g from float64, exact copies "
          "at %.8f; precision='auto' uses float32 there", device.platform, device.device_kind,
          worst, weakest_copy)
  return _PROVEN[key]


def _probe_split_products(device: jax.Device) -> tuple[float, float]:
  """(largest difference from float64, lowest score of an exact copy) of bfloat16x3 searches."""
  mesh = parallel.data_mesh([device])
  rng = np.random.default_rng(0)
  worst, weakest_copy = 0.0, 1.0
  for dtype in (np.uint8, np.float32):
    if dtype == np.uint8:
      train = rng.integers(0, 256, (192, 48, 48)).astype(np.uint8)
    else:
      train = (100.0 + 40.0 * rng.standard_normal((192, 48, 48))).astype(np.float32)
    noisy = train[8:16].astype(np.float64) + 8.0 * rng.standard_normal((8, 48, 48))
    synthetic = np.concatenate([train[:8], noisy.clip(0, 255).astype(dtype), train[16:32][::-1]])
    synthetic[16:] = rng.permutation(synthetic[16:].reshape(-1)).reshape(16, 48, 48)
    values, _ = top_k_correlation(synthetic, train, k=4, mesh=mesh, precision="bfloat16x3",
                                  refine=False)  # the kernel's own values
    ranked = -np.sort(-(_unit_rows_float64(synthetic) @ _unit_rows_float64(train).T),
                      axis=1)[:, :4]
    worst = max(worst, float(np.max(np.abs(values - ranked))))
    weakest_copy = min(weakest_copy, float(values[:8, 0].min()))
  return worst, weakest_copy


@functools.lru_cache(maxsize=1)
def _cpu_has_bfloat16_matrix_unit() -> bool:
  """True on CPUs with AMX-BF16 (Intel Sapphire Rapids and later), read from /proc/cpuinfo."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return "amx_bf16" in line.split()
  except OSError:
    pass
  return False


def search_correlation(synthetic: Any, train: Any, k: int = 1, *, block_size: int | None = None,
                       mesh: Mesh | None = None, precision: str = "auto",
                       tile_size: int | None = None, synthetic_chunk: int | None = None,
                       progress: bool = False, description: str = "correlation search",
                       names: tuple[str, str] = ("synthetic", "training"),
                       budget: SearchBudget | None = None, resident: bool | None = None,
                       refine: bool = True) -> SearchResult:
  """The exact top-k Pearson correlation search with its report of images that have none.

  `synthetic` and `train` are arrays (N, *image_shape), `ImageSource`s or paths (folders, .npy,
  .npz). `precision` picks the products: "float32", "bfloat16x3" (split products on a bfloat16
  matrix unit, within a few 1e-6 of float32), or "auto" (bfloat16x3 where the matrix unit has
  bfloat16 and a probe proved the split exact there, else float32). `names` name the two sets in
  error messages. `budget` sizes the work for the devices (`search_budget(mesh)` by default);
  `resident` keeps the training set on the devices across synthetic chunks (by default, where it
  fits in budget.resident_bytes). `refine` rescores matches within REFINE_BAND of 1 in float64
  (`refine_near_exact`). See the module docstring for how the search streams and shards.
  """
  synthetic = sources_lib.open_source(synthetic)
  train = sources_lib.open_source(train)
  sources_lib.check_same_shape(synthetic, train)
  mesh = mesh if mesh is not None else parallel.data_mesh()
  image_size = int(np.prod(train.shape))
  # No more candidates than training images (pad at the end); plan_search rejects k < 1.
  kernel_k = min(k, len(train))
  budget = budget if budget is not None else search_budget(mesh)
  plan = plan_search(len(synthetic), len(train), image_size, kernel_k, parallel.mesh_size(mesh),
                     block_size=block_size, tile_size=tile_size, synthetic_chunk=synthetic_chunk,
                     budget=budget)
  precision = resolve_precision(precision, mesh)
  if resident is None:
    resident = (plan.num_synthetic_chunks > 1
                and _device_bytes(plan, _transfer_dtype(train)) <= budget.resident_bytes)
  values, index, synthetic_status, train_status = _stream(
      synthetic, train, plan, mesh, centred=False, precision=precision, progress=progress,
      description=description, names=names, staging=budget.staging, resident=resident,
      read_ahead=synthetic is not train)

  recentre = np.flatnonzero(train_status == RECENTRE)
  if recentre.size:
    # Training images with a large offset under little texture: searched again, centred first.
    subset = sources_lib.IndexedSource(train, recentre)
    subset_plan = plan_search(len(synthetic), len(subset), image_size, min(k, len(subset)),
                              parallel.mesh_size(mesh), synthetic_chunk=plan.synthetic_chunk,
                              budget=budget)
    subset_values, subset_index, _, subset_status = _stream(
        synthetic, subset, subset_plan, mesh, centred=True, precision="float32",
        progress=progress, description=f"{description} (re-centred)", names=names,
        staging=budget.staging, resident=resident, read_ahead=synthetic is not train)
    train_status[recentre] = subset_status
    subset_index = np.where(subset_index >= 0, recentre[np.maximum(subset_index, 0)], -1)
    values, index = _merge_candidates(np.concatenate([values, subset_values], axis=1),
                                      np.concatenate([index, subset_index], axis=1), kernel_k)
  if kernel_k < k:
    values, index = _merge_candidates(values, index, k)  # pads with NaN and -1

  no_correlation = synthetic_status != OK
  values[no_correlation] = np.nan
  index[no_correlation] = -1
  if refine:
    values, index = refine_near_exact(values, index, synthetic, train)
  return SearchResult(values=values, indices=index,
                      zero_variance_synthetic=np.flatnonzero(synthetic_status == ZERO_VARIANCE),
                      zero_variance_train=np.flatnonzero(train_status == ZERO_VARIANCE),
                      precision=precision, num_devices=plan.num_devices)


REFINE_BAND = 1e-4  # matches scored at 1 - REFINE_BAND or more are rescored in float64
_MAX_REFINED_PAIRS = 1 << 20


def refine_near_exact(values: np.ndarray, index: np.ndarray, synthetic: sources_lib.ImageSource,
                      train: sources_lib.ImageSource) -> tuple[np.ndarray, np.ndarray]:
  """Rescores every match within REFINE_BAND of 1 in float64, and re-sorts its row.

  A float32 matrix product of long vectors rounds by a few 1e-6 (its sums run over every pixel),
  enough to score an exact copy 0.999997: within the search's 1e-5, but a privacy officer reads
  "1.000000" as "a copy" and "0.999997" as "nearly one". The band around 1 is where that
  difference is the verdict, so its matches are recomputed exactly, as faiss's IndexRefine
  reranks candidates with exact distances: an exact copy then scores 1. Near copies are rare, and
  each costs two image reads; past _MAX_REFINED_PAIRS the values are left as the search found them.
  """
  rows, columns = np.nonzero(np.nan_to_num(values, nan=-np.inf) >= 1 - REFINE_BAND)
  if not rows.size or rows.size > _MAX_REFINED_PAIRS:
    return values, index
  values = values.copy()
  train_rows: dict[int, np.ndarray] = {}
  for row in np.unique(rows):
    query = _unit_rows_float64(synthetic.read(int(row), int(row) + 1, dtype=np.float64))[0]
    for column in columns[rows == row]:
      match = int(index[row, column])
      if match not in train_rows:
        if len(train_rows) * query.size > (64 << 20):  # keep at most ~512 MB of rows
          train_rows.clear()
        train_rows[match] = _unit_rows_float64(
            train.read(match, match + 1, dtype=np.float64))[0]
      values[row, column] = np.clip(np.dot(query, train_rows[match]), -1.0, 1.0)
    order = np.lexsort((index[row], -values[row]))
    values[row], index[row] = values[row][order], index[row][order]
  return values, index


def _unit_rows_float64(images: np.ndarray) -> np.ndarray:
  """Each image (N, ...) flattened, mean-centred and scaled to unit norm, in float64."""
  rows = images.reshape(len(images), -1).astype(np.float64)
  rows -= rows.mean(axis=1, keepdims=True)
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _device_bytes(plan: SearchPlan, dtype: np.dtype) -> int:
  """Bytes of the whole training set's blocks, padding included, on each device."""
  num_blocks = _ceil_div(plan.num_train, plan.block_size)
  return num_blocks * plan.rows_per_device * plan.image_size * np.dtype(dtype).itemsize


def _stream(synthetic: sources_lib.ImageSource, train: sources_lib.ImageSource,
            plan: SearchPlan, mesh: Mesh, *, centred: bool, precision: str, progress: bool,
            description: str, names: tuple[str, str], staging: str | None = None,
            resident: bool = False, read_ahead: bool = True
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """One pass over the training set per synthetic chunk: streamed, or from the devices' copy.

  Returns values, indices (N_synthetic, k), and the synthetic and training status codes.
  """
  normalize_synthetic, block_step = _compile_kernels(mesh, plan, centred, precision)
  rows = parallel.rows_sharding(mesh)
  per_slot = plan.k

  all_values, all_index = [], []
  synthetic_status = np.zeros(plan.num_synthetic, np.int8)
  train_status = np.zeros(plan.num_train, np.int8)
  progress_bar = _progress_bar(plan, description, progress)
  reader = _BlockReader(train, plan, mesh, _transfer_dtype(train), staging=staging,
                        keep=resident)
  passes = _TrainingPasses(reader, resident)
  chunks = _SyntheticChunks(synthetic, plan, mesh, ahead=read_ahead)
  try:
    for chunk_start, chunk_stop, chunk in chunks.chunks():
      count = chunk_stop - chunk_start
      synthetic_operands, synthetic_sum, status = normalize_synthetic(chunk)
      synthetic_status[chunk_start:chunk_stop] = parallel.to_host(status)[:count]
      _raise_on_non_finite(synthetic, synthetic_status[chunk_start:chunk_stop], names[0],
                           offset=chunk_start)
      best_values = jax.device_put(
          np.full((plan.num_devices, plan.synthetic_chunk, per_slot), -np.inf, np.float32), rows)
      best_index = jax.device_put(
          np.full((plan.num_devices, plan.synthetic_chunk, per_slot), -1, np.int32), rows)
      first_chunk = chunk_start == 0
      in_flight = collections.deque()

      def collect():
        _collect_status(*in_flight.popleft(), train_status if first_chunk else None, plan,
                        train, progress_bar, count, names)

      for start, stop, block, block_index in passes.blocks():
        best_values, best_index, block_status = block_step(
            best_values, best_index, synthetic_operands, synthetic_sum, block, block_index)
        in_flight.append((start, stop, block_status))
        if len(in_flight) > 1:  # wait for the block before: at most two blocks live at once
          collect()
      while in_flight:
        collect()
      values, index = _merge_candidates(*_device_major(parallel.to_host(best_values),
                                                       parallel.to_host(best_index)), plan.k)
      all_values.append(values[:count])
      all_index.append(index[:count])
  finally:
    chunks.close()
    reader.close()
    progress_bar.close()
  return (np.concatenate(all_values), np.concatenate(all_index), synthetic_status,
          train_status)


def top_k_correlation(synthetic: Any, train: Any, k: int = 1, *, block_size: int | None = None,
                      mesh: Mesh | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """For every synthetic image, its k most correlated training images, exactly.

  Returns (values, indices), both (N_synthetic, k): Pearson correlations descending (float32,
  within 1e-5 of float64), and int64 indices into `train`. A synthetic image with zero variance
  has NaN values and indices -1; a training image with zero variance is never matched.
  """
  result = search_correlation(synthetic, train, k, block_size=block_size, mesh=mesh, **kwargs)
  return result.values, result.indices


def _collect_status(start, stop, block_status, train_status, plan, train, progress_bar,
                    num_synthetic, names):
  """Waits for one block, records its training images' statuses, and advances the progress bar."""
  status = parallel.to_host(block_status).reshape(plan.num_devices, plan.rows_per_device)
  if train_status is not None:
    real = plan.real_rows_per_device
    for slot in range(plan.num_devices):
      first = min(start + slot * real, stop)
      last = min(first + real, stop)
      train_status[first:last] = status[slot, :last - first]
    _raise_on_non_finite(train, train_status[start:stop], names[1], offset=start)
  progress_bar.update(stop - start)
  progress_bar.set_postfix_str(
      f"{num_synthetic} {names[0]} x {plan.num_train} {names[1]}", refresh=False)


def _raise_on_non_finite(source, status, role, offset=0):
  bad = np.flatnonzero(status == NON_FINITE) + offset
  if bad.size:
    names = ", ".join(source.image_id(int(i)) for i in bad[:5])
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    raise ValueError(f"{role} images from {source.description} have NaN or infinite pixels: "
                     f"{names}{more}; fix or remove them before the audit")


def _progress_bar(plan: SearchPlan, description: str, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=plan.num_train * plan.num_synthetic_chunks, desc=description, unit="img",
              unit_scale=True, disable=not enabled, dynamic_ncols=True)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)
