"""Tests for memjax.data.sources: every kind of source, its ids, and every kind of bad input."""

import concurrent.futures
import os
import pathlib
import tracemalloc

import nibabel as nib
import numpy as np
from PIL import Image
import pytest

from memjax.data import sources
from memjax.data.sources import (ArraySource, FolderSource, ImageSource, NumpyFileSource,
                                 check_same_shape, open_source, parse_tfds_spec)


def _save_png(path, array):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def _save_nifti(path, volume, slope=None, inter=None):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = nib.Nifti1Image(volume, np.eye(4))
  if slope is not None:
    image.header.set_slope_inter(slope, inter)
  nib.save(image, path)
  return path


def _gray(rng, shape=(6, 5), dtype=np.uint8, high=256):
  return rng.integers(0, high, shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# ArraySource.


def test_array_source_reads_copies_and_ids(rng):
  images = rng.normal(size=(7, 4, 3)).astype(np.float64)
  source = ArraySource(images)
  assert len(source) == 7 and source.shape == (4, 3) and source.dtype == np.float64
  block = source.read(2, 5)
  assert block.dtype == np.float32 and block.flags.c_contiguous
  np.testing.assert_allclose(block, images[2:5].astype(np.float32))
  raw = source.read(2, 5, dtype=None)
  assert raw.dtype == np.float64
  raw[...] = 0  # A new array: the source's images are untouched.
  assert np.any(images[2:5] != 0)
  assert source.read(3, 3).shape == (0, 4, 3)
  assert source.ids() == [str(i) for i in range(7)] and source.image_id(4) == "4"
  assert source.neighbors(3) == (None, None)


def test_array_source_big_endian_reads_native():
  images = np.arange(24, dtype=">i2").reshape(2, 3, 4)
  source = ArraySource(images)
  assert source.dtype == np.dtype("int16") and source.dtype.isnative
  np.testing.assert_array_equal(source.read(0, 2, dtype=None), images)


@pytest.mark.parametrize("shape", [(5,), (4, 5), (1, 2, 3, 4, 5, 6)])
def test_array_source_rejects_wrong_rank(shape):
  with pytest.raises(ValueError, match=r"\(N, H, W\[, C\]\)"):
    ArraySource(np.zeros(shape), description="my images")


@pytest.mark.parametrize("start, stop", [(-1, 2), (0, 8), (5, 3), (8, 8)])
def test_read_out_of_range_raises_index_error(start, stop):
  source = ArraySource(np.zeros((7, 2, 2)), description="the array")
  with pytest.raises(IndexError, match="the array"):
    source.read(start, stop)


def test_index_checks():
  source = ArraySource(np.zeros((3, 2, 2)))
  for method in (source.image_id, source.neighbors):
    with pytest.raises(IndexError):
      method(3)
    with pytest.raises(IndexError):
      method(-1)


# ----------------------------------------------------------------------------------------------
# NumpyFileSource.


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, ">f4", ">u2"])
def test_npy_block_reads(tmp_path, rng, dtype):
  images = (rng.random((20, 6, 5, 3)) * 200).astype(dtype)
  np.save(tmp_path / "x.npy", images)
  source = NumpyFileSource(tmp_path / "x.npy")
  assert len(source) == 20 and source.shape == (6, 5, 3)
  assert source.dtype == np.dtype(dtype).newbyteorder("=") and source.dtype.isnative
  np.testing.assert_array_equal(source.read(7, 12), images[7:12].astype(np.float32))
  raw = source.read(7, 12, dtype=None)
  assert raw.dtype.isnative and raw.dtype == source.dtype
  np.testing.assert_array_equal(raw, images[7:12])
  np.testing.assert_array_equal(source.read(0, 20, dtype=np.float64), images.astype(np.float64))
  assert source.ids()[:3] == ["0", "1", "2"] and source.neighbors(5) == (None, None)
  assert source.description == str(tmp_path / "x.npy")


def test_npy_volumes(tmp_path, rng):
  volumes = rng.random((3, 4, 5, 6)).astype(np.float32)
  np.save(tmp_path / "v.npy", volumes)
  source = open_source(tmp_path / "v.npy")
  assert source.shape == (4, 5, 6)
  np.testing.assert_array_equal(source.read(1, 3), volumes[1:3])


def test_npy_converting_read_in_chunks(tmp_path, rng, monkeypatch):
  monkeypatch.setattr(sources.arrays, "_CHUNK_BYTES", 3 * 8 * 8)  # Three images a chunk.
  images = rng.integers(0, 255, (10, 8, 8)).astype(np.uint8)
  np.save(tmp_path / "x.npy", images)
  np.testing.assert_array_equal(NumpyFileSource(tmp_path / "x.npy").read(1, 9), images[1:9])


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_npz_reads_forward_and_backward(tmp_path, rng, save):
  images = rng.normal(size=(30, 5, 4)).astype(np.float32)
  save(tmp_path / "s.npz", images=images, labels=np.arange(30))
  source = NumpyFileSource(tmp_path / "s.npz")  # 'images' is chosen among several arrays.
  assert len(source) == 30 and source.shape == (5, 4)
  for start, stop in [(0, 4), (4, 10), (20, 30), (3, 6), (10, 11), (0, 30), (29, 30), (0, 1)]:
    np.testing.assert_array_equal(source.read(start, stop), images[start:stop])
  source.close()
  np.testing.assert_array_equal(source.read(12, 14), images[12:14])  # Re-opens after close.


def test_npz_compressed_stream_is_reused(tmp_path, rng, monkeypatch):
  images = rng.normal(size=(10, 3, 3)).astype(np.float32)
  np.savez_compressed(tmp_path / "s.npz", images)
  source = NumpyFileSource(tmp_path / "s.npz")  # The only array, 'arr_0'.
  opened = []
  original = sources.arrays.StreamReader._reopen
  monkeypatch.setattr(sources.arrays.StreamReader, "_reopen",
                      lambda self: (opened.append(1), original(self))[1])
  for start in range(0, 10, 2):
    source.read(start, start + 2)
  assert len(opened) == 1  # Forward reads keep the stream.
  source.read(0, 2)
  assert len(opened) == 2  # A backward read re-opens it.


def test_npz_keys(tmp_path, rng):
  first, second = rng.random((2, 3, 3)), rng.random((4, 3, 3))
  np.savez(tmp_path / "k.npz", first=first, second=second)
  with pytest.raises(ValueError, match=r"k\.npz.*\['first', 'second'\]"):
    NumpyFileSource(tmp_path / "k.npz")
  with pytest.raises(ValueError, match=r"k\.npz.*no array 'third'.*\['first', 'second'\]"):
    NumpyFileSource(tmp_path / "k.npz", key="third")
  source = open_source(f"{tmp_path / 'k.npz'}:second")
  assert len(source) == 4 and source.description.endswith("k.npz:second")
  np.testing.assert_allclose(source.read(0, 4), second.astype(np.float32))
  np.testing.assert_allclose(NumpyFileSource(tmp_path / "k.npz", key="first").read(0, 2),
                             first.astype(np.float32))
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    open_source(f"{tmp_path / 'missing.npz'}:second")
  with pytest.raises(ValueError, match="key"):
    np.save(tmp_path / "a.npy", first)
    NumpyFileSource(tmp_path / "a.npy", key="first")


@pytest.mark.parametrize("shape", [(7,), (7, 8)])
def test_npy_wrong_rank(tmp_path, shape):
  np.save(tmp_path / "flat.npy", np.zeros(shape, np.float32))
  with pytest.raises(ValueError, match=r"flat\.npy.*\(N, H, W\[, C\]\)"):
    NumpyFileSource(tmp_path / "flat.npy")


def test_npy_fortran_order(tmp_path):
  np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((3, 4, 5), np.float32)))
  with pytest.raises(ValueError, match=r"f\.npy.*Fortran.*ascontiguousarray"):
    NumpyFileSource(tmp_path / "f.npy")


def test_npy_object_array(tmp_path):
  np.save(tmp_path / "o.npy", np.empty((2, 2, 2), dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match=r"o\.npy.*object"):
    NumpyFileSource(tmp_path / "o.npy")


def test_npy_truncated_and_garbage(tmp_path):
  np.save(tmp_path / "t.npy", np.zeros((10, 8, 8), np.float32))
  data = (tmp_path / "t.npy").read_bytes()
  (tmp_path / "t.npy").write_bytes(data[:len(data) - 100])
  with pytest.raises(ValueError, match=r"t\.npy is truncated"):
    NumpyFileSource(tmp_path / "t.npy")
  (tmp_path / "g.npy").write_bytes(b"this is not a numpy file at all")
  with pytest.raises(ValueError, match=r"g\.npy is not a valid \.npy"):
    NumpyFileSource(tmp_path / "g.npy")
  (tmp_path / "g.npz").write_bytes(b"PK garbage")
  with pytest.raises(ValueError, match=r"g\.npz is not a valid \.npz"):
    open_source(tmp_path / "g.npz")


def test_npy_shrunk_after_open_fails_at_read(tmp_path):
  np.save(tmp_path / "t.npy", np.zeros((10, 8, 8), np.float32))
  source = NumpyFileSource(tmp_path / "t.npy")
  data = (tmp_path / "t.npy").read_bytes()
  (tmp_path / "t.npy").write_bytes(data[:len(data) // 2])
  np.testing.assert_array_equal(source.read(0, 2), 0)
  with pytest.raises(ValueError, match=r"t\.npy is truncated"):
    source.read(8, 10)


def test_npz_truncated(tmp_path, rng):
  np.savez_compressed(tmp_path / "c.npz", images=rng.random((50, 16, 16)))
  data = (tmp_path / "c.npz").read_bytes()
  (tmp_path / "c.npz").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"c\.npz"):
    open_source(tmp_path / "c.npz")


def test_npy_reads_do_not_load_the_whole_file(tmp_path):
  """Block reads allocate about a block, and the process RSS does not grow with the file."""
  images = np.ones((512, 128, 128), np.float32)  # 32 MiB.
  np.save(tmp_path / "big.npy", images)
  np.savez_compressed(tmp_path / "big.npz", images=images)
  file_bytes = images.nbytes
  del images
  block_bytes = 8 * 128 * 128 * 4
  for path in ("big.npy", "big.npz"):
    source = open_source(tmp_path / path)
    tracemalloc.start()
    try:
      block = source.read(500, 508)  # Streams through the compressed member to reach it.
      _, peak = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    assert block.shape == (8, 128, 128) and np.all(block == 1)
    assert peak < 4 * block_bytes + (8 << 20) < file_bytes / 2, (path, peak)
    source.close()

  psutil = pytest.importorskip("psutil")
  process = psutil.Process()
  source = NumpyFileSource(tmp_path / "big.npy")
  rss_before = process.memory_info().rss
  total = 0.0
  for start in range(0, len(source), 32):
    total += float(source.read(start, start + 32, dtype=None)[0, 0, 0])
  growth = process.memory_info().rss - rss_before
  assert total == 16 and growth < file_bytes / 2, growth  # A memory map would grow by ~32 MiB.


# ----------------------------------------------------------------------------------------------
# FolderSource: image files.


def test_folder_png_8_and_16_bit(tmp_path, rng):
  eight = [_gray(rng) for _ in range(3)]
  sixteen = _gray(rng, dtype=np.uint16, high=65536)
  sixteen[0, 0] = 60000
  for i, image in enumerate(eight):
    _save_png(tmp_path / "eight" / f"{i}.png", image)
  _save_png(tmp_path / "sixteen.png", sixteen)
  source = FolderSource(tmp_path / "eight")
  assert source.shape == (6, 5) and source.dtype == np.uint8
  np.testing.assert_array_equal(source.read(0, 3, dtype=None), np.stack(eight))
  wide = open_source(tmp_path / "sixteen.png")
  assert wide.dtype == np.uint16 and wide.ids() == ["sixteen.png"]
  block = wide.read(0, 1, dtype=None)
  assert block.dtype == np.uint16 and block.max() > 255
  np.testing.assert_array_equal(block[0], sixteen)
  np.testing.assert_array_equal(wide.read(0, 1)[0], sixteen.astype(np.float32))


def test_folder_mixed_bit_depths_widen_dtype(tmp_path, rng):
  _save_png(tmp_path / "a.png", _gray(rng))
  wide = _gray(rng, dtype=np.uint16, high=65536)
  _save_png(tmp_path / "b.png", wide)
  source = FolderSource(tmp_path)
  assert source.dtype == np.uint16
  np.testing.assert_array_equal(source.read(1, 2, dtype=None)[0], wide)


def test_folder_rgb_rgba_png(tmp_path, rng):
  rgb = _gray(rng, shape=(6, 5, 3))
  rgba = _gray(rng, shape=(6, 5, 4))
  _save_png(tmp_path / "rgb" / "a.png", rgb)
  _save_png(tmp_path / "rgba" / "a.png", rgba)
  source = FolderSource(tmp_path / "rgb")
  assert source.shape == (6, 5, 3)
  np.testing.assert_array_equal(source.read(0, 1, dtype=None)[0], rgb)
  source = FolderSource(tmp_path / "rgba")
  assert source.shape == (6, 5, 4)
  np.testing.assert_array_equal(source.read(0, 1, dtype=None)[0], rgba)


def test_folder_jpeg_and_tiff(tmp_path, rng):
  smooth = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 7
  Image.fromarray(smooth).save(_mkdir(tmp_path / "jpeg") / "a.jpg", quality=90)
  Image.fromarray(np.stack([smooth] * 3, -1)).save(_mkdir(tmp_path / "rgbjpeg") / "b.JPEG")
  source = FolderSource(tmp_path / "jpeg")
  decoded = np.asarray(Image.open(tmp_path / "jpeg" / "a.jpg"))
  np.testing.assert_array_equal(source.read(0, 1, dtype=None)[0], decoded)
  assert np.abs(decoded.astype(int) - smooth).mean() < 8  # Lossy, but close.
  color = FolderSource(tmp_path / "rgbjpeg")
  assert color.shape == (16, 16, 3) and color.ids() == ["b.JPEG"]

  floats = rng.random((6, 5)).astype(np.float32)
  Image.fromarray(floats).save(_mkdir(tmp_path / "tiff") / "f.tif")
  wide = _gray(rng, dtype=np.uint16, high=65536)
  Image.fromarray(wide).save(_mkdir(tmp_path / "tiff16") / "w.tiff")
  source = FolderSource(tmp_path / "tiff")
  assert source.dtype == np.float32
  np.testing.assert_array_equal(source.read(0, 1)[0], floats)
  source = FolderSource(tmp_path / "tiff16")
  assert source.dtype == np.uint16
  np.testing.assert_array_equal(source.read(0, 1, dtype=None)[0], wide)


def _mkdir(path):
  path.mkdir(parents=True, exist_ok=True)
  return path


def test_folder_sorted_recursive_order_and_ids(tmp_path, rng):
  names = ["b/2.png", "a.png", "b/10.png", "c/d/e.png", "B.png"]
  images = {name: _gray(rng) for name in names}
  for name, image in images.items():
    _save_png(tmp_path / name, image)
  (tmp_path / "notes.txt").write_text("not an image")
  (tmp_path / "labels.csv").write_text("a,b")
  (tmp_path / "meta.json").write_text("{}")
  _save_png(tmp_path / ".hidden.png", _gray(rng))
  _save_png(tmp_path / ".cache" / "x.png", _gray(rng))
  source = FolderSource(tmp_path)
  expected = sorted(names)
  assert expected == ["B.png", "a.png", "b/10.png", "b/2.png", "c/d/e.png"]
  assert source.ids() == expected and len(source) == 5
  assert [source.image_id(i) for i in range(5)] == expected
  np.testing.assert_array_equal(source.read(0, 5, dtype=None),
                                np.stack([images[name] for name in expected]))
  np.testing.assert_array_equal(source.read(2, 4, dtype=None),
                                np.stack([images[name] for name in expected[2:4]]))
  assert source.neighbors(2) == (None, None)


def test_folder_decodes_each_file_once(tmp_path, rng, monkeypatch):
  for i in range(20):
    _save_png(tmp_path / f"{i:02d}.png", _gray(rng))
  source = FolderSource(tmp_path)
  opened = []
  original = Image.open
  monkeypatch.setattr(Image, "open", lambda *args, **kwargs: (opened.append(args[0]),
                                                              original(*args, **kwargs))[1])
  block = source.read(3, 17)
  assert block.shape == (14, 6, 5) and len(opened) == 14 and len(set(opened)) == 14


def test_folder_grayscale_mixed(tmp_path, rng):
  gray = _gray(rng)
  rgb = _gray(rng, shape=(6, 5, 3))
  _save_png(tmp_path / "a_gray.png", gray)
  _save_png(tmp_path / "b_rgb.png", rgb)
  with pytest.raises(ValueError, match=r"b_rgb\.png.*\(6, 5, 3\).*a_gray\.png.*\(6, 5\).*"
                     r"grayscale=True"):
    FolderSource(tmp_path)
  source = FolderSource(tmp_path, grayscale=True)
  assert source.shape == (6, 5) and source.dtype == np.uint8
  block = source.read(0, 2, dtype=None)
  np.testing.assert_array_equal(block[0], gray)
  np.testing.assert_array_equal(block[1], np.asarray(Image.fromarray(rgb).convert("L")))


def test_folder_different_shapes(tmp_path, rng):
  _save_png(tmp_path / "a.png", _gray(rng, shape=(6, 5)))
  _save_png(tmp_path / "b.png", _gray(rng, shape=(7, 5)))
  with pytest.raises(ValueError, match=r"b\.png has images of shape \(7, 5\).*a\.png.*\(6, 5\)"):
    FolderSource(tmp_path)


# ----------------------------------------------------------------------------------------------
# FolderSource: NIfTI.


def test_nifti_volumes(tmp_path, rng):
  volumes = [rng.integers(-100, 100, (4, 5, 6)).astype(np.int16) for _ in range(2)]
  for i, volume in enumerate(volumes):
    _save_nifti(tmp_path / f"sub-0{i}" / "t1.nii.gz", volume)
  source = FolderSource(tmp_path)
  assert source.shape == (4, 5, 6) and source.dtype == np.int16
  assert source.ids() == ["sub-00/t1.nii.gz", "sub-01/t1.nii.gz"]
  np.testing.assert_array_equal(source.read(0, 2, dtype=None), np.stack(volumes))
  assert source.neighbors(0) == (None, None)


def test_nifti_4d_channels_and_uncompressed(tmp_path, rng):
  volume = rng.random((4, 5, 6, 2)).astype(np.float32)
  _save_nifti(tmp_path / "multi.nii", volume)
  source = open_source(tmp_path / "multi.nii")
  assert source.shape == (4, 5, 6, 2) and source.ids() == ["multi.nii"]
  np.testing.assert_array_equal(source.read(0, 1)[0], volume)


def test_nifti_scaled_is_float(tmp_path):
  raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
  _save_nifti(tmp_path / "s.nii.gz", raw, slope=2.0, inter=1.0)
  source = open_source(tmp_path / "s.nii.gz")
  assert source.dtype == np.float32
  np.testing.assert_array_equal(source.read(0, 1, dtype=None)[0], raw * 2.0 + 1.0)


@pytest.mark.parametrize("axis", [2, 0, 1])
def test_nifti_slices(tmp_path, rng, axis):
  volumes = {name: rng.integers(0, 1000, (4, 5, 6)).astype(np.int16) for name in ("a", "b")}
  for name, volume in volumes.items():
    _save_nifti(tmp_path / f"{name}.nii.gz", volume)
  source = FolderSource(tmp_path, nifti_slice_axis=axis)
  depth = volumes["a"].shape[axis]
  assert len(source) == 2 * depth
  assert source.shape == tuple(s for i, s in enumerate((4, 5, 6)) if i != axis)
  expected = np.concatenate([np.moveaxis(volumes[name], axis, 0) for name in ("a", "b")])
  np.testing.assert_array_equal(source.read(0, len(source), dtype=None), expected)
  np.testing.assert_array_equal(source.read(depth - 2, depth + 1, dtype=None),
                                expected[depth - 2:depth + 1])  # Spans two volumes.
  np.testing.assert_array_equal(source.read(depth + 1, depth + 2)[0],
                                np.take(volumes["b"], 1, axis=axis).astype(np.float32))
  assert source.ids()[:2] == ["a.nii.gz:0", "a.nii.gz:1"]
  assert source.image_id(depth + 3) == "b.nii.gz:3"
  assert source.neighbors(0) == (None, 1)
  assert source.neighbors(1) == (0, 2)
  assert source.neighbors(depth - 1) == (depth - 2, None)
  assert source.neighbors(depth) == (None, depth + 1)
  assert source.neighbors(2 * depth - 1) == (2 * depth - 2, None)


def test_nifti_single_file_slices_and_volume_cache(tmp_path, rng, monkeypatch):
  volume = rng.random((3, 4, 8)).astype(np.float32)
  _save_nifti(tmp_path / "t1.nii.gz", volume)
  source = open_source(tmp_path / "t1.nii.gz", nifti_slice_axis=2)
  assert source.ids() == [f"t1.nii.gz:{k}" for k in range(8)]
  loads = []
  original = sources.folders._load_nifti
  monkeypatch.setattr(sources.folders, "_load_nifti",
                      lambda entry: (loads.append(entry.path), original(entry))[1])
  np.testing.assert_array_equal(source.read(2, 6), np.moveaxis(volume[:, :, 2:6], 2, 0))
  np.testing.assert_array_equal(source.read(6, 8), np.moveaxis(volume[:, :, 6:8], 2, 0))
  assert len(loads) == 1  # Loaded once, then cached.
  source.close()
  source.read(0, 1)
  assert len(loads) == 2


def test_nifti_slice_axis_validation(tmp_path, rng):
  _save_nifti(tmp_path / "a.nii.gz", rng.random((3, 4, 5)).astype(np.float32))
  with pytest.raises(ValueError, match="nifti_slice_axis"):
    FolderSource(tmp_path, nifti_slice_axis=3)


def test_nifti_corrupt(tmp_path, rng):
  (tmp_path / "garbage").mkdir()
  (tmp_path / "garbage" / "bad.nii.gz").write_bytes(b"not gzip at all" * 10)
  with pytest.raises(ValueError, match=r"bad\.nii\.gz"):
    FolderSource(tmp_path / "garbage")
  path = _save_nifti(tmp_path / "truncated" / "cut.nii.gz",
                     rng.random((20, 20, 20)).astype(np.float32))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  source = FolderSource(tmp_path / "truncated", nifti_slice_axis=0)  # The header is intact.
  with pytest.raises(ValueError, match=r"cut\.nii\.gz"):
    source.read(0, 2)


# ----------------------------------------------------------------------------------------------
# FolderSource: arrays inside folders, and bad files.


def test_folder_with_npz_samples(tmp_path, rng):
  first = rng.random((3, 4, 4)).astype(np.float32)
  second = rng.random((2, 4, 4)).astype(np.float32)
  np.savez(_mkdir(tmp_path / "samples") / "000.npz", images=first)
  np.savez_compressed(tmp_path / "samples" / "001.npz", images=second)
  np.save(tmp_path / "samples" / "002.npy", first[:1])
  source = FolderSource(tmp_path / "samples")
  assert source.ids() == ["000.npz:0", "000.npz:1", "000.npz:2", "001.npz:0", "001.npz:1",
                          "002.npy:0"]
  expected = np.concatenate([first, second, first[:1]])
  np.testing.assert_array_equal(source.read(0, 6), expected)
  np.testing.assert_array_equal(source.read(2, 5), expected[2:5])
  np.testing.assert_array_equal(source.read(4, 5), expected[4:5])
  np.testing.assert_array_equal(source.read(3, 4), expected[3:4])  # Backwards in the stream.
  assert source.neighbors(1) == (None, None)


def test_folder_corrupt_png(tmp_path, rng):
  (tmp_path / "garbage").mkdir()
  (tmp_path / "garbage" / "bad.png").write_bytes(os.urandom(200))
  with pytest.raises(ValueError, match=r"bad\.png"):
    FolderSource(tmp_path / "garbage")
  path = _save_png(tmp_path / "truncated" / "cut.png", _gray(rng, shape=(64, 64)))
  _save_png(tmp_path / "truncated" / "fine.png", _gray(rng, shape=(64, 64)))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  source = FolderSource(tmp_path / "truncated")  # Pillow reads only the header when opening.
  assert source.read(1, 2).shape == (1, 64, 64)
  with pytest.raises(ValueError, match=r"cut\.png.*corrupt or truncated"):
    source.read(0, 2)


def test_empty_folder(tmp_path):
  (tmp_path / "notes.txt").write_text("nothing here")
  with pytest.raises(ValueError, match=r"holds no image files.*\.png.*\.nii\.gz") as error:
    open_source(tmp_path)
  assert str(tmp_path) in str(error.value)


def test_missing_paths(tmp_path):
  missing = tmp_path / "nowhere"
  for opener in (open_source, FolderSource, NumpyFileSource):
    with pytest.raises(FileNotFoundError, match="nowhere"):
      opener(missing)


def test_unsupported_single_file(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match=r"notes\.txt is not a supported image file"):
    open_source(tmp_path / "notes.txt")


def test_folder_read_from_threads(tmp_path, rng):
  """Blocks read concurrently (as by the prefetch thread) come back right."""
  images = rng.random((40, 4, 4)).astype(np.float32)
  np.savez_compressed(_mkdir(tmp_path / "s") / "a.npz", images=images[:20])
  for i in range(20, 40):
    np.save(tmp_path / "s" / f"b{i}.npy", images[i:i + 1])
  source = FolderSource(tmp_path / "s")
  starts = list(range(0, 36, 3)) * 3
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    blocks = list(pool.map(lambda start: source.read(start, start + 4), starts))
  for start, block in zip(starts, blocks):
    np.testing.assert_array_equal(block, images[start:start + 4])


# ----------------------------------------------------------------------------------------------
# open_source, tfds specs and shape checks.


def test_open_source_dispatch(tmp_path, rng):
  array_source = ArraySource(np.zeros((2, 3, 3)))
  assert open_source(array_source) is array_source
  assert isinstance(open_source(np.zeros((2, 3, 3))), ArraySource)
  _save_png(tmp_path / "d" / "a.png", _gray(rng))
  assert isinstance(open_source(tmp_path / "d"), FolderSource)
  assert isinstance(open_source(str(tmp_path / "d" / "a.png")), FolderSource)
  np.save(tmp_path / "x.npy", np.zeros((2, 3, 3)))
  assert isinstance(open_source(str(tmp_path / "x.npy")), NumpyFileSource)
  assert isinstance(open_source(tmp_path / "x.npy"), ImageSource)
  with pytest.raises(TypeError):
    open_source(3)


def test_tfds_specs(tmp_path, monkeypatch):
  monkeypatch.setenv("MEMJAX_DATA_DIR", str(tmp_path))
  assert parse_tfds_spec("tfds:brats20:train") == ("brats20", None, "train")
  assert parse_tfds_spec("tfds:brats20/t1:test[:10%]") == ("brats20", "t1", "test[:10%]")
  for spec in ("tfds:", "tfds:brats20", "tfds::train", "tfds:a/b/c:train", "tfds:a/:train",
               "brats20:train"):
    with pytest.raises(ValueError, match="tfds:NAME"):
      parse_tfds_spec(spec)
  with pytest.raises(FileNotFoundError, match="no data set 'brats20/t1'"):
    open_source("tfds:brats20/t1:train")
  with pytest.raises(ValueError, match="tfds:NAME"):
    open_source("tfds:brats20")


def test_check_same_shape():
  check_same_shape(ArraySource(np.zeros((2, 4, 4)), "synthetic"),
                   ArraySource(np.zeros((5, 4, 4)), "training"))
  with pytest.raises(ValueError, match=r"synthetic.*\(4, 4\).*training.*\(4, 5\)"):
    check_same_shape(ArraySource(np.zeros((2, 4, 4)), "synthetic"),
                     ArraySource(np.zeros((5, 4, 5)), "training"))
  with pytest.raises(ValueError, match="grayscale=True"):
    check_same_shape(ArraySource(np.zeros((2, 4, 4)), "synthetic"),
                     ArraySource(np.zeros((5, 4, 4, 3)), "training"))
