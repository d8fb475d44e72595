"""Training input: grain pipelines over a random-access source, batches sharded over a mesh.

Every process runs the same pipeline over the same global order of examples: the source is
shuffled with a seed (reshuffled each epoch), repeated, and cut into global batches of
`batch_size` consecutive examples. Process p of n reads only the p-th of n equal consecutive
parts of each global batch, and no process reads another's examples. Its rows are placed on its
devices as one global `jax.Array` sharded over the mesh's data axis; on a mesh that holds each
process's devices together, process 0's first (`memjax.parallel.data_mesh`), a global batch
holds the same examples in the same rows whatever the number of processes. Images arrive in
[-1, 1] float32.

The iterator's state is a small dict (`get_state`/`set_state`): a run restored from it sees
exactly the batches that the interrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import grain
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from memjax.data import DATA_AXIS


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  """What fixes a pipeline's sequence of batches; a saved state only fits the same spec."""
  num_examples: int
  batch_size: int  # Global.
  seed: int
  shuffle: bool
  num_epochs: int | None  # None: repeat forever.
  process_index: int
  process_count: int

  @property
  def per_process_batch_size(self) -> int:
    return self.batch_size // self.process_count


def shuffle_seed(seed: int) -> int:
  """A 32-bit grain seed from the user's seed.

  grain reshuffles epoch e with seed + e, so seeds 0 and 1 would share all but one epoch's
  order; mixing the seed first makes nearby seeds unrelated.
  """
  return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint32)[0])


def to_unit_range(images: np.ndarray) -> np.ndarray:
  """Images as float32 in [-1, 1]: integers scaled from [0, dtype max], floats from [0, 1]."""
  images = np.asarray(images)
  if np.issubdtype(images.dtype, np.integer):
    half = np.float32(np.iinfo(images.dtype).max / 2)
    return images.astype(np.float32) / half - np.float32(1)
  if np.issubdtype(images.dtype, np.floating):
    return images.astype(np.float32) * np.float32(2) - np.float32(1)
  raise ValueError(f"images of dtype {images.dtype} cannot be mapped to [-1, 1]")


def from_unit_range(images: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
  """Images in [-1, 1] back in a data set's range: [0, max] integers, or [0, 1] floats.

  The inverse of `to_unit_range`, clipped and rounded: how samples are written in the training
  data's dtype.
  """
  images = np.asarray(images, np.float32)
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.integer):
    top = np.iinfo(dtype).max
    return np.clip(np.rint((images + 1.0) * (top / 2)), 0, top).astype(dtype)
  return np.clip((images + 1.0) / 2.0, 0.0, 1.0).astype(dtype)


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  return process_index, process_count


class _SelectAndScale(grain.transforms.Map):
  """Keeps the wanted features of a batch and maps its images to [-1, 1]."""

  def __init__(self, features: Sequence[str], image_key: str):
    self._features = tuple(features)
    self._image_key = image_key

  def map(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key in self._features:
      if key not in batch:
        raise KeyError(f"the data set has no feature {key!r}; it has {sorted(batch)}")
      value = np.asarray(batch[key])
      out[key] = to_unit_range(value) if key == self._image_key else value
    return out


def host_dataset(source: Any, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, features: Sequence[str] = ("image",),
                 image_key: str = "image", process_index: int | None = None,
                 process_count: int | None = None, num_threads: int = 4,
                 prefetch_batches: int = 4) -> tuple[grain.IterDataset, PipelineSpec]:
  """This process's batches of `source` as a grain dataset of numpy dicts.

  Args:
    source: random access examples (`len` and `[i]`, e.g. a tfds data source) that are dicts.
    batch_size: the global batch size; each process yields batch_size / process_count rows.
    seed: fixes the order; the same seed gives the same batches.
    shuffle: False reads the source in order (evaluation, debugging).
    num_epochs: passes over the source; None repeats forever. A finite run ends with the last
      complete global batch (at most batch_size - 1 examples are left out), so that every
      process yields the same number of batches.
    features: the keys to keep; `image_key` is mapped to [-1, 1] float32.
    image_key: the image feature.
    process_index: this process (default `jax.process_index()`).
    process_count: the processes (default `jax.process_count()`).
    num_threads: threads that read and decode batches.
    prefetch_batches: batches read ahead (at least `num_threads`).

  Returns:
    The dataset and the spec that fixes its order.
  """
  process_index, process_count = _process_layout(process_index, process_count)
  num_examples = len(source)
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the number of "
                     f"processes, {process_count}")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be positive or None, not {num_epochs}")
  total = None if num_epochs is None else num_examples * num_epochs
  if num_examples == 0 or (total is not None and total < batch_size):
    raise ValueError(f"the source holds {num_examples} examples: too few for one batch of "
                     f"{batch_size}" + ("" if num_epochs is None else f" in {num_epochs} epochs"))
  spec = PipelineSpec(num_examples, batch_size, int(seed), bool(shuffle), num_epochs,
                      process_index, process_count)

  dataset = grain.MapDataset.source(source)
  if shuffle:
    # Before repeat: the shuffle sees the epoch of each index and reshuffles every epoch.
    dataset = dataset.shuffle(seed=shuffle_seed(seed))
  dataset = dataset.repeat(num_epochs)
  if total is not None:
    dataset = dataset.slice(slice(0, total - total % batch_size))
  # Process p reads the p-th of process_count consecutive parts of every global batch: the
  # order cut into parts of the per-process size, then every process_count-th part (lazily: no
  # process reads another's examples).
  dataset = dataset.batch(spec.per_process_batch_size, drop_remainder=True)
  dataset = dataset.slice(slice(process_index, None, process_count))
  dataset = dataset.map(_SelectAndScale(features, image_key))
  read_options = grain.ReadOptions(num_threads=num_threads,
                                   prefetch_buffer_size=max(prefetch_batches, num_threads))
  return dataset.to_iter_dataset(read_options), spec


class DeviceBatches:
  """Global batches as `jax.Array`s sharded over a mesh's data axis, with a saveable state.

  Numeric features become global arrays whose rows are split over the data axis (replicated
  over any other mesh axis); text features stay numpy arrays of this process's rows.
  """

  def __init__(self, dataset: grain.IterDataset, spec: PipelineSpec, mesh: Mesh,
               data_axis: str = DATA_AXIS):
    if data_axis not in mesh.axis_names:
      raise ValueError(f"the mesh has no axis {data_axis!r}; its axes are {mesh.axis_names}")
    if spec.batch_size % mesh.shape[data_axis]:
      raise ValueError(f"batch_size {spec.batch_size} must be a multiple of the mesh's "
                       f"{data_axis!r} axis, {mesh.shape[data_axis]} devices")
    self.spec = spec
    self._sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    self._iterator = iter(dataset)

  def __iter__(self) -> DeviceBatches:
    return self

  def __next__(self) -> dict[str, Any]:
    batch = next(self._iterator)
    return {key: self._to_global(value) for key, value in batch.items()}

  def _to_global(self, rows: np.ndarray) -> Any:
    if rows.dtype.kind not in "biuf":
      return rows
    return jax.make_array_from_process_local_data(self._sharding, rows)

  def get_state(self) -> dict[str, Any]:
    """A JSON-serializable state: where the iterator is, and the spec it belongs to."""
    return {"iterator": self._iterator.get_state(), "spec": dataclasses.asdict(self.spec)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state` result of a pipeline with the same spec.

    Raises:
      ValueError: when the state comes from a pipeline with another source size, batch size,
        seed, shuffling or epochs, which would see other batches. Another number of processes
        sees the same global batches: a run resumes on more or fewer processes.
    """
    # Where the processes are does not change the global batches nor the position (the number
    # of global batches read): a run resumes on more or fewer processes.
    layout = ("process_index", "process_count")
    saved = {key: value for key, value in dict(state["spec"]).items() if key not in layout}
    current = {key: value for key, value in dataclasses.asdict(self.spec).items()
               if key not in layout}
    if saved != current:
      differ = ", ".join(f"{key} {saved.get(key)!r} -> {current[key]!r}" for key in current
                         if saved.get(key) != current[key])
      raise ValueError(f"cannot resume the input pipeline: the saved state belongs to another "
                       f"pipeline ({differ}); resume with the same data, batch_size and seed")
    self._iterator.set_state(state["iterator"])


def device_batches(source: Any, mesh: Mesh, *, batch_size: int, seed: int = 0,
                   data_axis: str = DATA_AXIS, **kwargs: Any) -> DeviceBatches:
  """Global batches of `source` sharded over `mesh`; see `host_dataset` for the arguments."""
  dataset, spec = host_dataset(source, batch_size=batch_size, seed=seed, **kwargs)
  return DeviceBatches(dataset, spec, mesh, data_axis)
