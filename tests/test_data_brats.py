"""BraTS builders on tiny fake subjects, checked against the paper's preprocessing in numpy."""

import logging
import os

import jax
import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from memjax.data import brats
from memjax.data import pipeline
from memjax.data import sources
from memjax.data import tfds_source

tfds.disable_progress_bar()

SHAPE = (12, 12, 8)  # X, Y, Z: 8 axial slices of 12x12.
SLICE_SIZE = 16  # Padded 12 -> 16, 2 pixels on each side, as 240 -> 256 pads 8.
NUM_SUBJECTS = 7
NUM_TEST = 2
ROOT = "MICCAI_BraTS2020_TrainingData"


def fake_subject(rng, radius_by_slice):
  """Five channels: a disc of random tissue per slice (radius 0 = empty slice), labels 0-4."""
  x, y = np.mgrid[:SHAPE[0], :SHAPE[1]] - (SHAPE[0] - 1) / 2
  disc = np.stack([(x**2 + y**2) <= r**2 for r in radius_by_slice], axis=-1)
  volumes = {}
  for channel in ("t1", "t2", "flair", "t1ce"):
    volumes[channel] = (rng.integers(1, 3000, SHAPE) * disc).astype(np.int16)
  volumes["seg"] = (rng.choice(np.array([0, 1, 2, 4], np.uint8), SHAPE) * disc).astype(np.uint8)
  return volumes


def write_subject(folder, subject_id, volumes, suffix=".nii.gz"):
  os.makedirs(folder / subject_id, exist_ok=True)
  for channel, volume in volumes.items():
    nib.save(nib.Nifti1Image(volume, np.eye(4)),
             str(folder / subject_id / f"{subject_id}_{channel}{suffix}"))


def expected_slices(volumes):
  """The paper's MATLAB in numpy: volume / max * 255, pad to 16x16, keep if >15% of T1 > 50."""
  channels = [volumes[c].astype(np.float64) / volumes[c].max() * 255
              for c in ("t1", "t2", "flair", "t1ce")]
  channels.append(volumes["seg"].astype(np.float64) / 5 * 255)
  stacked = np.stack(channels, axis=-1)
  padded = np.zeros((SLICE_SIZE, SLICE_SIZE, SHAPE[2], 5))
  padded[2:14, 2:14] = stacked
  kept = {}
  for z in range(SHAPE[2]):
    if np.sum(padded[:, :, z, 0] > 50) / SLICE_SIZE**2 > 0.15:
      kept[z] = np.floor(padded[:, :, z] + 0.5).astype(np.uint8)  # MATLAB's uint8() rounding.
  return kept


@pytest.fixture(scope="module")
def brats_data(tmp_path_factory):
  """Seven subjects (one missing flair, one with a corrupt t2) and the builds of both configs."""
  base = tmp_path_factory.mktemp("brats")
  manual_dir, data_dir = base / "manual", base / "data"
  rng = np.random.default_rng(0)
  subjects = {}
  for i in range(1, NUM_SUBJECTS + 1):
    subject_id = f"BraTS20_Training_{i:03d}"
    # Radii 0-6: slices with a radius under about 3.2 cover too little of the 16x16 frame.
    subjects[subject_id] = fake_subject(rng, rng.integers(0, 7, SHAPE[2]))
    write_subject(manual_dir / ROOT, subject_id, subjects[subject_id],
                  suffix=".nii" if i == 1 else ".nii.gz")  # BraTS 2020 ships .nii files.
  os.remove(manual_dir / ROOT / "BraTS20_Training_003" / "BraTS20_Training_003_flair.nii.gz")
  (manual_dir / ROOT / "BraTS20_Training_005" / "BraTS20_Training_005_t2.nii.gz").write_bytes(
      b"not a nifti file")
  download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  builders = {}
  for kind in ("slices", "volumes"):
    config = brats.BratsConfig(name=f"{kind}_test", kind=kind, slice_size=SLICE_SIZE,
                               volume_shape=(10, 10, 14), num_test_subjects=NUM_TEST)
    builder = brats.Brats2020(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=download_config)
    builders[kind] = builder
  return subjects, manual_dir, data_dir, builders


def _by_subject(split_source):
  out = {}
  for example in split_source:
    out.setdefault(example["subject_id"].decode(), {})[int(example["slice_index"])] = (
        example["image"])
  return out


def test_slices_match_paper_preprocessing(brats_data):
  subjects, _, _, builders = brats_data
  data = builders["slices"].as_data_source()
  built = {**_by_subject(data["train"]), **_by_subject(data["test"])}
  assert sorted(built) == sorted(set(subjects) - {"BraTS20_Training_003", "BraTS20_Training_005"})
  num_dropped = 0
  for subject_id, slices in built.items():
    expected = expected_slices(subjects[subject_id])
    num_dropped += SHAPE[2] - len(expected)
    assert sorted(slices) == sorted(expected), subject_id
    for z, image in slices.items():
      assert image.shape == (SLICE_SIZE, SLICE_SIZE, 5) and image.dtype == np.uint8
      np.testing.assert_array_equal(image, expected[z], err_msg=f"{subject_id} slice {z}")
  assert num_dropped > 0  # The coverage rule was exercised.


def test_split_by_subject_with_fixed_permutation(brats_data):
  subjects, _, _, builders = brats_data
  data = builders["slices"].as_data_source()
  train, test = set(_by_subject(data["train"])), set(_by_subject(data["test"]))
  assert not train & test
  ids = sorted(subjects)
  order = np.random.default_rng(0).permutation(len(ids))
  expected_test = {ids[i] for i in order[-NUM_TEST:]} - {"BraTS20_Training_003",
                                                          "BraTS20_Training_005"}
  assert test == expected_test
  metadata = builders["slices"].info.metadata
  assert set(metadata["test_subjects"]) == test and set(metadata["train_subjects"]) == train


def test_skipped_subjects_counted_in_metadata(brats_data):
  _, _, data_dir, _ = brats_data
  reread = tfds.builder("brats2020/slices_test", data_dir=str(data_dir))  # From the files.
  metadata = reread.info.metadata
  assert metadata["num_skipped_subjects"] == 2
  assert set(metadata["skipped_subjects"]) == {"BraTS20_Training_003", "BraTS20_Training_005"}
  assert "flair" in metadata["skipped_subjects"]["BraTS20_Training_003"]


def test_skip_warns_and_strict_fails(brats_data, tmp_path, caplog):
  _, manual_dir, _, _ = brats_data
  config = brats.BratsConfig(name="slices_strict", kind="slices", slice_size=SLICE_SIZE,
                             num_test_subjects=NUM_TEST)
  download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  with pytest.raises(ValueError, match="BraTS20_Training_00[35]"):
    brats.Brats2020(config=config, data_dir=str(tmp_path / "strict"),
                    strict=True).download_and_prepare(download_config=download_config)
  with caplog.at_level(logging.WARNING, logger="memjax.data.brats"):
    brats.Brats2020(config=config, data_dir=str(tmp_path / "lenient")).download_and_prepare(
        download_config=download_config)
  warned = " ".join(record.getMessage() for record in caplog.records)
  assert "BraTS20_Training_003" in warned and "BraTS20_Training_005" in warned


def test_volumes_config(brats_data):
  subjects, _, _, builders = brats_data
  example = builders["volumes"].as_data_source("train")[0]
  volumes = subjects[example["subject_id"].decode()]
  assert example["image"].shape == (10, 10, 14, 5)
  # (X, Y, Z) -> (Z, X, Y), centred: Z 8 -> 10 pads 1 before; X 12 -> 10 crops 1; Y 12 -> 14 pads 1.
  t1 = volumes["t1"].astype(np.float64) / volumes["t1"].max() * 255
  expected = np.zeros((10, 10, 14))
  expected[1:9, :, 1:13] = np.moveaxis(t1, 2, 0)[:, 1:11, :]
  np.testing.assert_array_equal(example["image"][..., 0], np.floor(expected + 0.5))
  np.testing.assert_array_equal(example["image"][1:9, :, 1:13, 4],
                                np.moveaxis(volumes["seg"], 2, 0)[:, 1:11, :] * 51)


def test_subset_keeps_test_subjects(brats_data, tmp_path):
  _, manual_dir, _, builders = brats_data
  config = brats.subset_config("slices", 4, slice_size=SLICE_SIZE, num_test_subjects=NUM_TEST)
  builder = brats.Brats2020(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  full = builders["slices"].info.metadata
  assert builder.info.metadata["test_subjects"] == full["test_subjects"]
  assert 2 <= len(builder.info.metadata["train_subjects"]) <= 4  # 4, less the skipped.
  assert set(builder.info.metadata["train_subjects"]) <= set(full["train_subjects"])


def test_brats2021_layout_without_top_folder(tmp_path):
  rng = np.random.default_rng(1)
  for i in range(3):
    write_subject(tmp_path / "manual", f"BraTS2021_{i:05d}", fake_subject(rng, [6] * SHAPE[2]))
  config = brats.BratsConfig(name="slices_test", kind="slices", slice_size=SLICE_SIZE,
                             num_test_subjects=1)
  builder = brats.Brats2021(config=config, data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  assert builder.info.splits["train"].num_examples == 2 * SHAPE[2]
  assert builder.info.splits["test"].num_examples == SHAPE[2]


def test_missing_manual_dir_is_a_clear_error(tmp_path):
  builder = brats.Brats2021(config="slices", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="Synapse.*BraTS2021_NNNNN"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / "absent")))


def test_open_source_over_slices(brats_data, monkeypatch):
  subjects, _, data_dir, builders = brats_data
  monkeypatch.setenv("MEMJAX_DATA_DIR", str(data_dir))
  source = tfds_source.TfdsSource("brats2020", "slices_test", "train")
  data = builders["slices"].as_data_source("train")
  assert len(source) == len(data) and source.shape == (SLICE_SIZE, SLICE_SIZE, 5)
  assert source.dtype == np.uint8
  block = source.read(1, 4, dtype=None)
  for row, index in enumerate(range(1, 4)):
    np.testing.assert_array_equal(block[row], data[index]["image"])
  ids = source.ids()
  assert ids[0] == f"{data[0]['subject_id'].decode()}:{data[0]['slice_index']}"
  assert len(set(ids)) == len(ids)
  for index, image_id in enumerate(ids):
    subject, z = image_id.split(":")
    previous, following = source.neighbors(index)
    kept = sorted(expected_slices(subjects[subject]))
    position = kept.index(int(z))
    assert (previous is None) == (position == 0)
    assert (following is None) == (position == len(kept) - 1)
    if previous is not None:
      assert ids[previous] == f"{subject}:{kept[position - 1]}"
    if following is not None:
      assert ids[following] == f"{subject}:{kept[position + 1]}"
  # Through sources.ImageSource's interface, a split slice reads the first examples.
  part = tfds_source.TfdsSource("brats2020", "slices_test", "train[:3]")
  assert isinstance(part, sources.ImageSource) and len(part) == 3
  np.testing.assert_array_equal(part.read(0, 3), source.read(0, 3))


def test_open_source_errors(brats_data, tmp_path):
  _, _, data_dir, _ = brats_data
  with pytest.raises(FileNotFoundError, match="not prepared"):
    tfds_source.TfdsSource("brats2020", "slices", "train", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no data set 'nothing'"):
    tfds_source.TfdsSource("nothing", None, "train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="splits are"):
    tfds_source.TfdsSource("brats2020", "slices_test", "validation", data_dir=str(data_dir))


def test_pipeline_over_built_slices(brats_data):
  _, _, _, builders = brats_data
  data = builders["slices"].as_data_source("train")
  mesh = jax.make_mesh((4,), ("data",))
  batches = pipeline.device_batches(data, mesh, batch_size=4, seed=0,
                                    features=("image", "subject_id", "slice_index"))
  images = {(e["subject_id"], int(e["slice_index"])): e["image"] for e in data}
  for _ in range(3):
    batch = next(batches)
    assert batch["image"].shape == (4, SLICE_SIZE, SLICE_SIZE, 5)
    got = np.asarray(batch["image"])
    for row, key in enumerate(zip(batch["subject_id"], np.asarray(batch["slice_index"]))):
      np.testing.assert_allclose(got[row], images[(key[0], int(key[1]))] / 127.5 - 1,
                                 atol=1e-6)


def test_open_source_tfds_spec(brats_data, monkeypatch):
  _, _, data_dir, builders = brats_data
  monkeypatch.setenv("MEMJAX_DATA_DIR", str(data_dir))
  try:
    source = sources.open_source("tfds:brats2020/slices_test:test")
  except NotImplementedError:
    pytest.skip("open_source does not route 'tfds:' specs to tfds_source.TfdsSource yet")
  data = builders["slices"].as_data_source("test")
  assert isinstance(source, tfds_source.TfdsSource) and len(source) == len(data)
  np.testing.assert_array_equal(source.read(0, 1, dtype=None)[0], data[0]["image"])


def test_splits_over_the_memory_buffer_build_without_tensorflow(brats_data, tmp_path,
                                                                  monkeypatch):
  """TFDS spills a split past its memory buffer to bucket files, through tf.io.gfile."""
  _, manual_dir, _, builders = brats_data
  from tensorflow_datasets.core import shuffle
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1000)  # About 3 slices.
  config = brats.BratsConfig(name="slices_test", kind="slices", slice_size=SLICE_SIZE,
                             num_test_subjects=NUM_TEST)
  builder = brats.Brats2020(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  for split in ("train", "test"):
    spilled = builder.as_data_source(split)
    in_memory = builders["slices"].as_data_source(split)
    assert len(spilled) == len(in_memory) > 3
    for a, b in zip(spilled, in_memory):
      assert (a["subject_id"], a["slice_index"]) == (b["subject_id"], b["slice_index"])
      np.testing.assert_array_equal(a["image"], b["image"])
