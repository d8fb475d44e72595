"""grain pipelines: order fixed by the seed, resumable state, process shards, sharded batches."""

import json

import jax
import numpy as np
import pytest

from memjax.data import pipeline

NUM_EXAMPLES = 50


@pytest.fixture(scope="module")
def source():
  """Examples whose image encodes the index, as a tfds data source returns them."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_EXAMPLES, 4, 4, 2), dtype=np.uint8)
  images[0] = 0
  images[1] = 255
  return [{"image": images[i], "index": i, "subject_id": f"s{i // 5}".encode()}
          for i in range(NUM_EXAMPLES)]


def _indices(dataset_or_iterator, num_batches):
  iterator = iter(dataset_or_iterator)
  return [np.asarray(next(iterator)["index"]).tolist() for _ in range(num_batches)]


def _host(source, **kwargs):
  kwargs.setdefault("batch_size", 8)
  kwargs.setdefault("features", ("image", "index"))
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  return pipeline.host_dataset(source, **kwargs)[0]


def test_same_seed_same_order_other_seed_other_order(source):
  first = _indices(_host(source, seed=3), 12)
  assert first == _indices(_host(source, seed=3), 12)
  assert first != _indices(_host(source, seed=4), 12)
  assert first[:6] != _indices(_host(source, seed=4), 12)[:6]


def test_each_epoch_is_a_new_permutation(source):
  rows = sum(_indices(_host(source, seed=0, batch_size=10), 10), [])
  epochs = [rows[:NUM_EXAMPLES], rows[NUM_EXAMPLES:]]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_EXAMPLES))
  assert epochs[0] != epochs[1] and epochs[0] != list(range(NUM_EXAMPLES))


def test_finite_epochs_end_with_the_last_full_batch(source):
  batches = list(_host(source, seed=0, batch_size=8, num_epochs=2))
  assert len(batches) == (2 * NUM_EXAMPLES) // 8
  assert all(len(b["index"]) == 8 for b in batches)


def test_unshuffled_reads_in_order(source):
  assert _indices(_host(source, shuffle=False, batch_size=5), 2) == [[0, 1, 2, 3, 4],
                                                                      [5, 6, 7, 8, 9]]


def test_processes_read_disjoint_parts_of_the_same_global_batches(source):
  single = _indices(_host(source, seed=7, batch_size=8), 9)
  parts = [_indices(_host(source, seed=7, batch_size=8, process_index=p, process_count=2), 9)
           for p in range(2)]
  for step in range(9):
    assert len(parts[0][step]) == len(parts[1][step]) == 4
    assert sorted(parts[0][step] + parts[1][step]) == sorted(single[step])
    if step < NUM_EXAMPLES // 8:  # Within the first epoch no example repeats.
      assert not set(parts[0][step]) & set(parts[1][step])


def test_images_map_to_unit_range(source):
  batch = next(iter(_host(source, shuffle=False, batch_size=4)))
  images = batch["image"]
  assert images.dtype == np.float32 and images.shape == (4, 4, 4, 2)
  expected = np.stack([source[i]["image"] for i in range(4)]).astype(np.float64) / 127.5 - 1
  np.testing.assert_allclose(images, expected, atol=1e-6)
  assert images[0].min() == -1.0 and images[1].max() == 1.0
  floats = pipeline.to_unit_range(np.array([0.0, 0.5, 1.0]))
  np.testing.assert_array_equal(floats, [-1, 0, 1])


def test_device_batches_are_sharded_over_four_devices(source):
  mesh = jax.make_mesh((4,), ("data",))
  batches = pipeline.device_batches(source, mesh, batch_size=8, seed=1,
                                    features=("image", "index", "subject_id"))
  batch = next(batches)
  image = batch["image"]
  assert isinstance(image, jax.Array) and image.shape == (8, 4, 4, 2)
  assert image.sharding.spec == jax.sharding.PartitionSpec("data")
  shards = sorted(image.addressable_shards, key=lambda s: s.index[0].start)
  assert [s.data.shape[0] for s in shards] == [2, 2, 2, 2]
  assert len({s.device for s in shards}) == 4
  expected = np.stack([source[i]["image"] for i in np.asarray(batch["index"])])
  np.testing.assert_allclose(np.asarray(image), expected / 127.5 - 1, atol=1e-6)
  assert isinstance(batch["subject_id"], np.ndarray)  # Text stays on the host.
  with pytest.raises(ValueError, match="multiple of the mesh"):
    pipeline.device_batches(source, mesh, batch_size=6)


def test_restored_state_continues_identically(source):
  mesh = jax.make_mesh((4,), ("data",))
  make = lambda: pipeline.device_batches(source, mesh, batch_size=8, seed=5,
                                         features=("image", "index"))
  run = make()
  for _ in range(8):  # Crosses into the second epoch.
    next(run)
  state = json.loads(json.dumps(run.get_state()))  # As a checkpoint stores it.
  expected = [next(run) for _ in range(6)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(np.asarray(got["index"]), np.asarray(want["index"]))
    np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
  other = pipeline.device_batches(source, mesh, batch_size=8, seed=6)
  with pytest.raises(ValueError, match="seed 5 -> 6"):
    other.set_state(state)


def test_argument_errors(source):
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    pipeline.host_dataset(source, batch_size=5, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="too few"):
    pipeline.host_dataset(source[:3], batch_size=4, num_epochs=1, process_index=0,
                          process_count=1)
  with pytest.raises(KeyError, match="no feature 'label'"):
    next(iter(_host(source, features=("image", "label"))))
