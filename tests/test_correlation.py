"""The correlation search against float64 numpy, planted copies, and every layout of the work."""

import numpy as np
import pytest

from memjax import parallel
from memjax.data import sources
from memjax.memorization import correlation
from memjax.memorization import kernels
from memjax.memorization import top_k_correlation


def pearson_float64(synthetic, train):
  """All pairwise Pearson correlations in float64 (NaN for zero-variance rows): the reference."""
  a = np.asarray(synthetic, np.float64).reshape(len(synthetic), -1)
  b = np.asarray(train, np.float64).reshape(len(train), -1)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return a @ b.T


def assert_exact_top_k(values, indices, reference, k, atol=1e-9):
  """values are the k largest reference correlations per row, in float64 (issue 21: every value
  reported is the float64 one), and indices point at them."""
  assert values.shape == indices.shape == (reference.shape[0], k)
  assert values.dtype == np.float64 and indices.dtype == np.int64
  ranked = np.sort(np.where(np.isnan(reference), -np.inf, reference), axis=1)[:, ::-1][:, :k]
  np.testing.assert_allclose(values, ranked, atol=atol, rtol=0)
  picked = np.take_along_axis(reference, indices, axis=1)
  np.testing.assert_allclose(picked, values, atol=atol, rtol=0)
  assert np.all(np.diff(values, axis=1) <= 0), "values must descend"
  for row in indices:
    assert len(set(row.tolist())) == k, "a training image listed twice"


PRECISIONS = ["float32", "bfloat16x3"]


@pytest.fixture(scope="module")
def mesh4():
  return parallel.data_mesh(4)


@pytest.fixture(scope="module")
def mesh1():
  return parallel.data_mesh(1)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_random_images_match_float64(rng, mesh4, precision):
  train = rng.random((300, 20, 20), dtype=np.float32)
  synthetic = rng.random((41, 20, 20), dtype=np.float32)
  values, indices = top_k_correlation(synthetic, train, k=4, mesh=mesh4, precision=precision)
  assert_exact_top_k(values, indices, pearson_float64(synthetic, train), 4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_uint8_images_and_planted_copies(rng, mesh4, precision):
  train = rng.integers(0, 256, (257, 16, 16), dtype=np.uint8)
  synthetic = rng.integers(0, 256, (30, 16, 16), dtype=np.uint8)
  synthetic[0] = train[3]  # exact copy
  synthetic[1] = np.clip(train[100].astype(np.int32) // 2 + 60, 0, 255)  # intensity-scaled
  noisy = train[200].astype(np.float64) + rng.normal(0, 20, (16, 16))
  synthetic[2] = np.clip(np.round(noisy), 0, 255)  # noisy copy
  reference = pearson_float64(synthetic, train)
  values, indices = top_k_correlation(synthetic, train, k=3, mesh=mesh4, precision=precision)
  assert_exact_top_k(values, indices, reference, 3)
  assert indices[0, 0] == 3 and values[0, 0] == pytest.approx(1.0, abs=1e-6)
  assert indices[1, 0] == 100 and values[1, 0] > 0.999
  assert indices[2, 0] == 200 and 0.8 < values[2, 0] < 0.99
  assert np.all(values[3:, 0] < 0.5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_scaled_float_copy_is_a_perfect_correlation(rng, mesh1, precision):
  train = rng.random((100, 12, 12), dtype=np.float32)
  synthetic = (3.5 * train[[42, 7]] - 1.25).astype(np.float32)
  values, indices = top_k_correlation(synthetic, train, mesh=mesh1, precision=precision)
  np.testing.assert_array_equal(indices[:, 0], [42, 7])
  np.testing.assert_allclose(values[:, 0], 1.0, atol=1e-6)
  assert np.all(values <= 1.0), "a correlation never exceeds 1"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_identical_for_any_block_size_and_device_count(rng, mesh1, mesh4, precision):
  train = rng.integers(0, 256, (301, 10, 10), dtype=np.uint8)
  synthetic = rng.integers(0, 256, (23, 10, 10), dtype=np.uint8)
  synthetic[:3] = train[[0, 150, 300]]
  expected_values, expected_indices = top_k_correlation(synthetic, train, k=5, mesh=mesh1,
                                                        precision=precision)
  assert_exact_top_k(expected_values, expected_indices, pearson_float64(synthetic, train), 5)
  for mesh in (mesh1, mesh4):
    for block_size in (1, 3, 7, 63, 64, 65, 299, 301, 1000):
      values, indices = top_k_correlation(synthetic, train, k=5, block_size=block_size, mesh=mesh,
                                          precision=precision)
      np.testing.assert_array_equal(values, expected_values, err_msg=f"block_size={block_size}")
      np.testing.assert_array_equal(indices, expected_indices, err_msg=f"block_size={block_size}")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_ties_go_to_the_lower_training_index(rng, mesh1, mesh4, precision):
  train = rng.random((200, 8, 8), dtype=np.float32)
  duplicated = [5, 17, 130, 199]
  for j in duplicated[1:]:
    train[j] = train[duplicated[0]]
  synthetic = train[[5]].copy()
  for mesh in (mesh1, mesh4):
    for block_size in (None, 9, 64):
      values, indices = top_k_correlation(synthetic, train, k=6, block_size=block_size,
                                          mesh=mesh, precision=precision)
      np.testing.assert_array_equal(indices[0, :4], duplicated)
      assert np.all(values[0, :4] == values[0, 0])
      assert values[0, 4] < 0.9


@pytest.mark.parametrize("precision", PRECISIONS)
def test_k_larger_than_a_tile_and_than_the_training_set(rng, mesh4, precision):
  train = rng.random((70, 6, 6), dtype=np.float32)
  synthetic = rng.random((5, 6, 6), dtype=np.float32)
  values, indices = top_k_correlation(synthetic, train, k=70, mesh=mesh4, precision=precision)
  assert_exact_top_k(values, indices, pearson_float64(synthetic, train), 70)
  values, indices = top_k_correlation(synthetic, train, k=75, mesh=mesh4, precision=precision)
  assert np.all(np.isnan(values[:, 70:])) and np.all(indices[:, 70:] == -1)
  assert_exact_top_k(values[:, :70], indices[:, :70], pearson_float64(synthetic, train), 70)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_zero_variance_images_have_no_correlation(rng, mesh4, precision):
  train = rng.random((90, 10, 10), dtype=np.float32)
  train[4] = 0.1  # a constant whose float32 mean is not exact
  train[60] = 0.0
  synthetic = rng.random((6, 10, 10), dtype=np.float32)
  synthetic[1] = 7.0
  synthetic[3] = train[4]
  synthetic[5] = train[61]
  result = correlation.search_correlation(synthetic, train, k=3, mesh=mesh4,
                                          precision=precision)
  assert np.all(np.isnan(result.values[[1, 3]])) and np.all(result.indices[[1, 3]] == -1)
  np.testing.assert_array_equal(result.zero_variance_synthetic, [1, 3])
  np.testing.assert_array_equal(result.zero_variance_train, [4, 60])
  assert not np.isin(result.indices, [4, 60]).any()
  assert result.indices[5, 0] == 61
  defined = [0, 2, 4, 5]
  reference = pearson_float64(synthetic, train)[defined]
  assert_exact_top_k(result.values[defined], result.indices[defined], reference, 3)


def test_nearly_constant_image_is_still_correlated(rng, mesh1):
  train = np.full((70, 8, 8), 128, np.uint8)
  for image in train[:69]:  # two pixels differ by one grey level: a real, defined correlation
    image.reshape(-1)[rng.choice(64, 2, replace=False)] = [127, 129]
  # train[69] stays constant
  synthetic = train[[10]]
  result = correlation.search_correlation(synthetic, train, k=1, mesh=mesh1)
  assert result.indices[0, 0] == 10 and result.values[0, 0] == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_array_equal(result.zero_variance_train, [69])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_large_offset_small_texture_stays_exact(rng, mesh4, precision):
  train = (1000.0 + rng.normal(0, 1, (130, 24, 24))).astype(np.float32)
  synthetic = (1000.0 + rng.normal(0, 1, (9, 24, 24))).astype(np.float32)
  synthetic[0] = train[77] + rng.normal(0, 0.5, (24, 24)).astype(np.float32)
  values, indices = top_k_correlation(synthetic, train, k=2, mesh=mesh4, precision=precision)
  assert_exact_top_k(values, indices, pearson_float64(synthetic, train), 2)
  assert indices[0, 0] == 77


@pytest.mark.parametrize("precision", PRECISIONS)
def test_large_images_stay_within_1e5(rng, mesh1, precision):
  train = rng.integers(0, 4096, (40, 128, 128), dtype=np.uint16)
  synthetic = rng.integers(0, 4096, (6, 128, 128), dtype=np.uint16)
  synthetic[0] = np.clip(train[9].astype(np.int32) + rng.integers(-300, 300, (128, 128)), 0, 4095)
  values, indices = top_k_correlation(synthetic, train, k=3, mesh=mesh1, precision=precision)
  assert_exact_top_k(values, indices, pearson_float64(synthetic, train), 3)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_volumes_and_channels(rng, mesh4, precision):
  volumes = rng.random((40, 6, 8, 8), dtype=np.float32)
  queries = np.concatenate([volumes[[12]], rng.random((3, 6, 8, 8), dtype=np.float32)])
  values, indices = top_k_correlation(queries, volumes, k=2, mesh=mesh4, precision=precision)
  assert_exact_top_k(values, indices, pearson_float64(queries, volumes), 2)
  assert indices[0, 0] == 12
  channels = rng.random((50, 8, 8, 5), dtype=np.float32)
  queries = channels[[3, 4]].copy()
  queries[1, ..., 4] = 0  # one channel differs: all channels count together
  values, indices = top_k_correlation(queries, channels, k=1, mesh=mesh4, precision=precision)
  np.testing.assert_array_equal(indices[:, 0], [3, 4])
  assert values[0, 0] == pytest.approx(1.0, abs=1e-6) and values[1, 0] < 0.99
  assert_exact_top_k(values, indices, pearson_float64(queries, channels), 1)


def test_synthetic_chunks(rng, mesh4):
  train = rng.random((150, 9, 9), dtype=np.float32)
  synthetic = rng.random((37, 9, 9), dtype=np.float32)
  synthetic[30] = train[140]
  whole_values, whole_indices = top_k_correlation(synthetic, train, k=3, mesh=mesh4)
  values, indices = top_k_correlation(synthetic, train, k=3, mesh=mesh4, synthetic_chunk=8)
  np.testing.assert_array_equal(indices, whole_indices)
  np.testing.assert_allclose(values, whole_values, atol=1e-6)
  assert indices[30, 0] == 140


def test_sources_and_paths(tmp_path, rng, mesh4):
  train = rng.integers(0, 256, (120, 12, 12), dtype=np.uint8)
  synthetic = rng.integers(0, 256, (10, 12, 12), dtype=np.uint8)
  synthetic[4] = train[111]
  np.save(tmp_path / "train.npy", train)
  np.savez(tmp_path / "synthetic.npz", images=synthetic)
  values, indices = top_k_correlation(str(tmp_path / "synthetic.npz"),
                                      sources.NumpyFileSource(tmp_path / "train.npy"),
                                      k=2, mesh=mesh4, block_size=50)
  assert_exact_top_k(values, indices, pearson_float64(synthetic, train), 2)
  assert indices[4, 0] == 111


def test_non_finite_pixels_are_an_error_naming_the_image(rng, mesh4):
  train = rng.random((80, 6, 6), dtype=np.float32)
  train[33, 2, 2] = np.nan
  with pytest.raises(ValueError, match=r"training images .* NaN or infinite pixels: 33"):
    top_k_correlation(rng.random((3, 6, 6), dtype=np.float32), train, mesh=mesh4)
  synthetic = rng.random((3, 6, 6), dtype=np.float32)
  synthetic[2, 0, 0] = np.inf
  with pytest.raises(ValueError, match=r"synthetic images .* NaN or infinite pixels: 2"):
    top_k_correlation(synthetic, rng.random((80, 6, 6), dtype=np.float32), mesh=mesh4)


def test_bad_arguments(rng, mesh1):
  train = rng.random((10, 6, 6), dtype=np.float32)
  with pytest.raises(ValueError, match="shape"):
    top_k_correlation(rng.random((2, 6, 7), dtype=np.float32), train, mesh=mesh1)
  with pytest.raises(ValueError, match="k must be at least 1"):
    top_k_correlation(train, train, k=0, mesh=mesh1)
  with pytest.raises(ValueError, match="block_size"):
    top_k_correlation(train, train, block_size=-3, mesh=mesh1)


def test_plan_never_depends_on_devices_for_the_tile():
  plans = [correlation.plan_search(100, 10_000, 64 * 64, 1, n) for n in (1, 2, 4, 8)]
  assert len({p.tile_size for p in plans}) == 1
  assert len({p.synthetic_chunk for p in plans}) == 1
  for p in plans:
    assert p.block_size <= p.num_train
    assert p.real_rows_per_device <= p.rows_per_device


def test_aligned_arrays_stream_without_copies_and_agree(rng, mesh4):
  # An aligned array of the stored dtype is handed to the devices as views; the answer must not
  # change, including for the padded last block and with the buffers of the ring reused.
  data = rng.random((700, 16, 16), dtype=np.float32)
  aligned = sources.aligned_empty(data.shape, data.dtype)
  aligned[...] = data
  assert aligned.ctypes.data % 64 == 0
  synthetic = data[[5, 699, 300]] + rng.normal(0, 0.05, (3, 16, 16)).astype(np.float32)
  expected = top_k_correlation(synthetic, data, k=3, mesh=mesh4, tile_size=64)
  got = top_k_correlation(synthetic, aligned, k=3, mesh=mesh4, tile_size=64)
  np.testing.assert_array_equal(got[0], expected[0])
  np.testing.assert_array_equal(got[1], expected[1])
  np.testing.assert_array_equal(got[1][:, 0], [5, 699, 300])
  assert_exact_top_k(*got, pearson_float64(synthetic, data), 3)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_offset_rows_are_searched_again_centred_and_merged(rng, mesh4, precision):
  # Most training images are ordinary; a few sit on a large offset with little texture, which the
  # raw product cannot rank to 1e-5: they must come back through the centred pass, merged by rank.
  train = rng.random((200, 12, 12), dtype=np.float32)
  offset = [3, 77, 150, 151, 199]
  train[offset] = 500.0 + rng.random((5, 12, 12), dtype=np.float32)
  synthetic = rng.random((8, 12, 12), dtype=np.float32)
  synthetic[0] = train[77] - 500.0 + rng.normal(0, 0.01, (12, 12)).astype(np.float32)
  synthetic[1] = train[20]
  reference = pearson_float64(synthetic, train)
  result = correlation.search_correlation(synthetic, train, k=4, mesh=mesh4, block_size=37,
                                          precision=precision)
  assert_exact_top_k(result.values, result.indices, reference, 4)
  assert result.indices[0, 0] == 77 and result.indices[1, 0] == 20
  assert result.zero_variance_train.size == 0


def test_indexed_source_reads_runs_in_order(rng):
  data = rng.integers(0, 255, (30, 4, 4), dtype=np.uint8)
  subset = sources.IndexedSource(sources.ArraySource(data), [2, 3, 4, 9, 1, 1, 29])
  np.testing.assert_array_equal(subset.read(0, 7, dtype=None), data[[2, 3, 4, 9, 1, 1, 29]])
  np.testing.assert_array_equal(subset.read(2, 5), data[[4, 9, 1]].astype(np.float32))
  assert subset.ids() == ["2", "3", "4", "9", "1", "1", "29"] and len(subset) == 7
  with pytest.raises(IndexError):
    sources.IndexedSource(sources.ArraySource(data), [30])


def test_small_tiles_for_large_images(rng, mesh4):
  # Tiles smaller than a group (3D volumes get tiles of 8 images); results must not change.
  train = rng.random((61, 4, 6, 6), dtype=np.float32)
  synthetic = np.concatenate([train[[60, 0]], rng.random((3, 4, 6, 6), dtype=np.float32)])
  reference = pearson_float64(synthetic, train)
  for tile_size in (8, 24, 64):
    values, indices = top_k_correlation(synthetic, train, k=9, mesh=mesh4, tile_size=tile_size,
                                        block_size=13)
    assert_exact_top_k(values, indices, reference, 9)
    np.testing.assert_array_equal(indices[:2, 0], [60, 0])
  assert kernels.default_tile_size(240 * 240 * 155, 300) == kernels.TILE_MULTIPLE
  with pytest.raises(ValueError, match="multiple of 8"):
    top_k_correlation(synthetic, train, mesh=mesh4, tile_size=12)


def test_precisions_agree_and_auto_resolves(rng, mesh4):
  train = rng.integers(0, 65535, (90, 20, 20), dtype=np.uint16)
  synthetic = np.concatenate([train[[4, 80]], rng.integers(0, 65535, (5, 20, 20), np.uint16)])
  float32 = top_k_correlation(synthetic, train, k=3, mesh=mesh4, precision="float32")
  split = top_k_correlation(synthetic, train, k=3, mesh=mesh4, precision="bfloat16x3")
  np.testing.assert_array_equal(split[1], float32[1])
  np.testing.assert_allclose(split[0], float32[0], atol=2e-6)
  assert correlation.resolve_precision("auto", mesh4) in ("float32", "bfloat16x3")
  with pytest.raises(ValueError, match="precision"):
    top_k_correlation(synthetic, train, mesh=mesh4, precision="float16")


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float16, np.float32])
def test_split_products_stay_exact_on_offsets_below_the_recentring_line(rng, mesh4, dtype):
  # Offsets of 10 to 30 standard deviations stay on the main path (the re-centring line is 32):
  # the split bfloat16 products of wider pixels must centre the tile themselves.
  base = {np.uint16: 30000.0, np.int16: -9000.0, np.float16: 900.0, np.float32: 3000.0}[dtype]
  scale = abs(base) / 30.0
  train = (base + scale * rng.standard_normal((120, 16, 16))).astype(dtype)
  synthetic = (base + scale * rng.standard_normal((6, 16, 16))).astype(dtype)
  synthetic[0] = train[33]
  reference = pearson_float64(synthetic, train)
  values, indices = top_k_correlation(synthetic, train, k=3, mesh=mesh4, precision="bfloat16x3")
  assert_exact_top_k(values, indices, reference, 3)
  assert indices[0, 0] == 33


def test_big_endian_aligned_array(rng, mesh1):
  data = rng.random((128, 8, 8))
  big_endian = sources.aligned_empty(data.shape, ">f4")
  big_endian[...] = data
  values, indices = top_k_correlation(big_endian[:3], big_endian, k=1, mesh=mesh1, tile_size=64)
  np.testing.assert_array_equal(indices[:, 0], [0, 1, 2])
  np.testing.assert_allclose(values[:, 0], 1.0, atol=1e-6)


def test_k_far_beyond_the_training_set_is_cheap_and_padded(rng, mesh4):
  train = rng.random((30, 5, 5), dtype=np.float32)
  synthetic = rng.random((400, 5, 5), dtype=np.float32)
  values, indices = top_k_correlation(synthetic, train, k=20000, mesh=mesh4)
  assert values.shape == indices.shape == (400, 20000)
  assert_exact_top_k(values[:, :30], indices[:, :30], pearson_float64(synthetic, train), 30)
  assert np.all(np.isnan(values[:, 30:])) and np.all(indices[:, 30:] == -1)


def test_errors_name_the_set_they_concern(rng, mesh4):
  holdout = rng.random((20, 6, 6), dtype=np.float32)
  holdout[7, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"^holdout images .* NaN or infinite pixels: 7"):
    correlation.search_correlation(rng.random((10, 6, 6), dtype=np.float32), holdout,
                                   mesh=mesh4, names=("training", "holdout"))
