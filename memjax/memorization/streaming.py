"""How rows reach the search's kernels: streamed blocks, read-ahead threads, and the merge.

The reference set streams through device memory in blocks. A background thread reads block j+1
from its source (folder, .npy, array) while the devices compute block j (and another reads the
next query chunk); each block is split by rows over every device of the mesh, and each device
keeps a running top-k of its rows (kernels.py). Only two blocks are ever in flight, so peak memory
does not grow with the reference set. Pixels travel in their stored dtype where float32 holds it
exactly (uint8 images move 4x fewer bytes than float32); wider ones are conditioned first
(`conditioned_rows`).
"""

from __future__ import annotations

import collections
import concurrent.futures

import jax
import numpy as np
from jax.sharding import Mesh

from memjax import parallel
from memjax.data import sources as sources_lib
from memjax.memorization.kernels import ceil_div
from memjax.memorization.kernels import compile_kernels
from memjax.memorization.kernels import NON_FINITE
from memjax.memorization.kernels import SearchPlan

# Exactly representable in float32: these travel as stored.
NARROW_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.float16, np.float32)


def shifted_piece(rows: np.ndarray, start: int, stop: int,
                  scale: np.ndarray | None = None) -> np.ndarray:
  """Pixels [start, stop) of each row (N, size) minus the row's first pixel, in float64, times
  each row's `scale` if given.

  The difference is exact for integers (modulo 2^64, exact while the row's range fits in int64;
  the float64 difference past that, as exact at that range) and formed from halved floats, which
  cannot overflow: neither a shift nor a positive scale changes a Pearson correlation.
  """
  piece = rows[:, start:stop]
  if np.issubdtype(rows.dtype, np.integer):
    exact = (piece.astype(np.uint64) - rows[:, :1].astype(np.uint64)).view(np.int64)
    approximate = piece.astype(np.float64) - rows[:, :1].astype(np.float64)
    values = np.where(np.abs(approximate) >= 2.0**62, approximate, exact.astype(np.float64))
  else:
    values = piece.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
      values = values * 0.5 - rows[:, :1].astype(np.float64) * 0.5
  return values if scale is None else values * scale[:, None]


def shifted_rows_float64(images: np.ndarray) -> np.ndarray:
  """Each image (N, ...) flattened, minus its first value, scaled by a power of two, in float64.

  Pearson correlation does not change under a shift and a positive scale of either image, and
  this pair keeps the texture of any finite input (`shifted_piece`): the power of two brings each
  row's largest difference into [0.5, 1). float64 images around 1e8 or 1e200 and int64 images
  near 2^62 keep every bit of their texture, where a plain cast to float32 rounds it away (and a
  mean or a square of 1e200 overflows).
  """
  rows = images.reshape(len(images), -1)
  shifted = shifted_piece(rows, 0, rows.shape[1])
  with np.errstate(invalid="ignore"):
    largest = np.max(np.abs(shifted), axis=1)
  usable = np.isfinite(largest) & (largest > 0)
  _, exponent = np.frexp(np.where(usable, largest, 1.0))
  return shifted * np.ldexp(1.0, -exponent)[:, None]


def conditioned_rows(images: np.ndarray) -> np.ndarray:
  """`shifted_rows_float64` in float32: rows whose Pearson correlations are those of `images`."""
  return shifted_rows_float64(images).astype(np.float32)


def transfer_dtype(source: sources_lib.ImageSource) -> np.dtype:
  """The dtype pixels travel in: the stored one when float32 holds it exactly, else float32."""
  dtype = np.dtype(source.dtype)
  return dtype if dtype in NARROW_DTYPES else np.dtype(np.float32)


def read_rows_into(source: sources_lib.ImageSource, start: int, stop: int, out: np.ndarray,
                   condition: bool) -> None:
  """Images [start, stop) into `out` (stop - start, image size), conditioned where asked and the
  stored dtype is one float32 cannot hold."""
  if condition and np.dtype(source.dtype) not in NARROW_DTYPES:
    out[:] = conditioned_rows(source.read(start, stop, dtype=None))
  else:
    source.read_into(start, stop, out.reshape((stop - start,) + tuple(source.shape)))


class BlockReader:
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
               dtype: np.dtype, *, staging: str | None = None, keep: bool = False,
               condition: bool = False):
    self._train = train
    self._condition = condition
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
      read_rows_into(self._train, first, last, out[:last - first], self._condition)
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


class TrainingPasses:
  """The training blocks for each synthetic chunk: streamed every time, or kept on the devices.

  A kept (resident) training set is read from its source and copied to the devices once, during
  the first synthetic chunk; later chunks reuse the device copies.
  """

  def __init__(self, reader: BlockReader, resident: bool):
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


class QueryChunks:
  """Synthetic chunks read and copied to the devices in a background thread, one ahead.

  Without `ahead` (the synthetic and training images are one source, which is read by one
  thread at a time) each chunk is read when it is needed.
  """

  def __init__(self, synthetic: sources_lib.ImageSource, plan: SearchPlan, mesh: Mesh,
               ahead: bool = True, condition: bool = False, exclude: np.ndarray | None = None):
    self._synthetic = synthetic
    self._condition = condition
    self._exclude = exclude
    self._ahead = ahead
    self._plan = plan
    self._replicated = parallel.replicated(mesh)
    self._dtype = transfer_dtype(synthetic)
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="memjax-synthetic")

  def _read(self, start: int, stop: int) -> jax.Array:
    count = stop - start
    chunk = sources_lib.aligned_empty((self._plan.synthetic_chunk, self._plan.image_size),
                                      self._dtype)  # fresh: the device may adopt it
    read_rows_into(self._synthetic, start, stop, chunk[:count], self._condition)
    chunk[count:] = 0
    if self._exclude is None:
      return jax.device_put(chunk, self._replicated), None
    exclude = np.full((self._plan.synthetic_chunk,), -1, np.int32)
    exclude[:count] = self._exclude[start:stop]
    return (jax.device_put(chunk, self._replicated),
            jax.device_put(exclude, self._replicated))

  def chunks(self):
    """Yields (start, stop, (chunk, excluded indices or None) on the devices), the next chunk
    already being read."""
    bounds = _bounds(self._plan.num_synthetic, self._plan.synthetic_chunk)
    if self._ahead:
      chunks = _read_ahead(lambda start, stop: self._pool.submit(self._read, start, stop), bounds)
    else:
      chunks = (self._read(start, stop) for start, stop in bounds)
    for (start, stop), chunk in zip(bounds, chunks):
      yield start, stop, chunk

  def close(self):
    self._pool.shutdown(wait=True)


def _device_major(values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-device candidate lists (devices, N, k) side by side as (N, devices * k)."""
  num_devices, n, per = values.shape
  return (np.moveaxis(values, 0, 1).reshape(n, num_devices * per),
          np.moveaxis(index, 0, 1).reshape(n, num_devices * per))


def merge_candidates(values: np.ndarray, index: np.ndarray, k: int
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


def device_bytes(plan: SearchPlan, dtype: np.dtype) -> int:
  """Bytes of the whole training set's blocks, padding included, on each device."""
  num_blocks = ceil_div(plan.num_train, plan.block_size)
  return num_blocks * plan.rows_per_device * plan.image_size * np.dtype(dtype).itemsize


def stream(synthetic: sources_lib.ImageSource, train: sources_lib.ImageSource,
           plan: SearchPlan, mesh: Mesh, *, centred: bool = False, precision: str = "float32",
           metric: str = "correlation", exclude: np.ndarray | None = None,
           progress: bool = False, description: str = "search",
           names: tuple[str, str] = ("query", "reference"), staging: str | None = None,
           resident: bool = False, read_ahead: bool = True
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """One pass over the reference set per query chunk: streamed, or from the devices' copy.

  Returns the kernel's values (scores, best first) and indices (N_queries, plan.k), the
  query and reference status codes, and the largest error scale of the blocks (kernels.py). `exclude`: (N_queries,) int32 reference index each query
  must not match (-1: none). Rows of dtypes float32 cannot hold are conditioned for
  "correlation" (`conditioned_rows`); "l2" takes them as float32 (its candidates are rescored).
  """
  condition = metric == "correlation"
  normalize_synthetic, block_step = compile_kernels(mesh, plan, centred, precision, metric,
                                                    exclude is not None)
  rows = parallel.rows_sharding(mesh)
  per_slot = plan.k

  all_values, all_index = [], []
  error_scales = []
  synthetic_status = np.zeros(plan.num_synthetic, np.int8)
  train_status = np.zeros(plan.num_train, np.int8)
  progress_bar = _progress_bar(plan, description, progress)
  reader = BlockReader(train, plan, mesh, transfer_dtype(train), staging=staging,
                       keep=resident, condition=condition)
  passes = TrainingPasses(reader, resident)
  chunks = QueryChunks(synthetic, plan, mesh, ahead=read_ahead, condition=condition,
                       exclude=exclude)
  try:
    for chunk_start, chunk_stop, (chunk, chunk_exclude) in chunks.chunks():
      count = chunk_stop - chunk_start
      synthetic_operands, synthetic_sum, status = normalize_synthetic(chunk)
      synthetic_status[chunk_start:chunk_stop] = parallel.to_host(status)[:count]
      raise_on_non_finite(synthetic, synthetic_status[chunk_start:chunk_stop], names[0],
                          offset=chunk_start)
      best_values = jax.device_put(
          np.full((plan.num_devices, plan.synthetic_chunk, per_slot), -np.inf, np.float32), rows)
      best_index = jax.device_put(
          np.full((plan.num_devices, plan.synthetic_chunk, per_slot), -1, np.int32), rows)
      first_chunk = chunk_start == 0
      in_flight = collections.deque()
      extra = () if chunk_exclude is None else (chunk_exclude,)

      def collect():
        _collect_status(*in_flight.popleft(), train_status if first_chunk else None, plan,
                        train, progress_bar, count, names)

      for start, stop, block, block_index in passes.blocks():
        best_values, best_index, block_status, block_error_scale = block_step(
            best_values, best_index, synthetic_operands, synthetic_sum, block, block_index,
            *extra)
        if first_chunk:
          error_scales.append(block_error_scale)
        in_flight.append((start, stop, block_status))
        if len(in_flight) > 1:  # wait for the block before: at most two blocks live at once
          collect()
      while in_flight:
        collect()
      values, index = merge_candidates(*_device_major(parallel.to_host(best_values),
                                                      parallel.to_host(best_index)), plan.k)
      all_values.append(values[:count])
      all_index.append(index[:count])
  finally:
    chunks.close()
    reader.close()
    progress_bar.close()
  error_scale = max((float(np.max(parallel.to_host(scale))) for scale in error_scales),
                    default=0.0)
  return (np.concatenate(all_values), np.concatenate(all_index), synthetic_status,
          train_status, error_scale)


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
    raise_on_non_finite(train, train_status[start:stop], names[1], offset=start)
  progress_bar.update(stop - start)
  progress_bar.set_postfix_str(
      f"{num_synthetic} {names[0]} x {plan.num_train} {names[1]}", refresh=False)


def raise_on_non_finite(source, status, role, offset=0):
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


def unit_rows_float64(images: np.ndarray) -> np.ndarray:
  """Each image (N, ...) flattened, mean-centred and scaled to unit norm, in float64.

  Shifted and scaled first (`shifted_rows_float64`), so any finite input keeps its texture.
  """
  rows = shifted_rows_float64(images)
  rows -= rows.mean(axis=1, keepdims=True)
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)
