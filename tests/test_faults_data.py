"""Data faults of issue 15 (items 9 and 14), each reproduced for real, none mocked.

* A FIFO named like an image in a folder (os.mkfifo): opening one blocks until a writer comes,
  so an audit over that folder hung. Every test that makes a FIFO runs under `_fifo_watchdog`,
  which turns a regression into a failure, never a hang.
* A truncated array_record file of a really prepared data set, and one with damaged bytes.
* A really truncated JPEG (and a FIFO named .jpeg) in a Kermany-layout folder.
* BraTS NIfTI volumes where no slice passes the brain-slice filter.
* A preparation killed with SIGKILL in a subprocess, then run again; and a second preparation
  started while the first one runs.
"""

import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import nibabel as nib
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from memjax.data import brats
from memjax.data import cxr
from memjax.data import sources
from tools import prepare_data

tfds.disable_progress_bar()

REPO = pathlib.Path(__file__).resolve().parent.parent
DATASET = "cxr_pneumonia/64"
KERMANY_TRAIN = ["train/NORMAL/IM-0001-0001.jpeg", "train/NORMAL/IM-0002-0001.jpeg",
                 "train/NORMAL/IM-0003-0001.jpeg", "train/PNEUMONIA/person1_bacteria_1.jpeg",
                 "train/PNEUMONIA/person2_virus_2.jpeg"]
KERMANY_TEST = ["test/NORMAL/IM-0100-0001.jpeg"]


@contextlib.contextmanager
def _fifo_watchdog(fifos, seconds=30.0):
  """Fails the test, instead of hanging it, if the code under test opens one of `fifos`.

  After `seconds` a thread opens each FIFO for writing (non-blocking: it succeeds only when a
  reader waits in open) and closes it, over and over, so that a blocked reader sees end of file
  and the test ends. Yields the list of FIFOs that were found open by a reader.
  """
  stop, opened = threading.Event(), []

  def release() -> None:
    if stop.wait(seconds):
      return
    while not stop.is_set():
      for path in fifos:
        try:
          fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody has it open for reading.
          continue
        os.close(fd)
        opened.append(os.fspath(path))
      stop.wait(0.05)

  thread = threading.Thread(target=release, daemon=True)
  thread.start()
  try:
    yield opened
  finally:
    stop.set()
    thread.join()
  assert not opened, f"the code under test opened the FIFOs {sorted(set(opened))}"


def _one_line(error):
  message = str(error)
  assert "\n" not in message, message
  return message


# ----------------------------------------------------------------------------------------------
# Item 9: a FIFO or another non-regular file named like an image.


def _pngs(folder, count, rng, shape=(16, 16)):
  folder.mkdir(parents=True, exist_ok=True)
  images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"a{i}.png")
  return images


def test_folder_skips_fifos_and_broken_links_with_one_warning(tmp_path, caplog):
  rng = np.random.default_rng(0)
  images = _pngs(tmp_path / "train", 2, rng)
  (tmp_path / "train" / "link.png").symlink_to(tmp_path / "train" / "a0.png")  # Kept.
  (tmp_path / "train" / "gone.png").symlink_to(tmp_path / "train" / "deleted.png")
  fifos = [tmp_path / "train" / name for name in ("fifo.png", "fifo.nii.gz", "fifo.npy")]
  for fifo in fifos:
    os.mkfifo(fifo)
  with _fifo_watchdog(fifos), caplog.at_level(logging.WARNING):
    source = sources.open_source(tmp_path / "train")
    assert source.ids() == ["a0.png", "a1.png", "link.png"]
    np.testing.assert_array_equal(source.read(0, 3, dtype=None),
                                  np.stack([images[0], images[1], images[0]]))
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("memjax.data")]
    assert len(warnings) == 1, warnings
    for name, kind in [("fifo.nii.gz", "a FIFO"), ("fifo.npy", "a FIFO"), ("fifo.png", "a FIFO"),
                       ("gone.png", "a broken link")]:
      assert f"{name} ({kind})" in warnings[0]
    assert "link.png" not in warnings[0] and "4 entries" in warnings[0]

    # Named directly, a FIFO is refused in one line, whatever its extension says.
    for fifo in fifos:
      with pytest.raises(ValueError) as error:
        sources.open_source(fifo)
      assert _one_line(error.value).startswith(f"{fifo} is a FIFO, not a regular file")
    with pytest.raises(ValueError, match="is a FIFO"):
      sources.NumpyFileSource(fifos[2])


def _audit_inputs(synthetic, train):
  """The flags naming the audit's images, under the keys that configs/audit.py has."""
  from configs import audit  # pylint: disable=g-import-not-at-top

  if "synthetic_images" in audit.get_config().get("audit", {}):
    return [f"--config.audit.synthetic_images={synthetic}",
            f"--config.audit.training_images={train}"]
  return [f"--config.synthetic={synthetic}", f"--config.train={train}"]


def test_audit_over_a_folder_with_a_fifo_ends_and_flags_the_copy(tmp_path):
  """The issue's case: `launch.py` audits a training folder holding a FIFO named t9.png."""
  rng = np.random.default_rng(1)
  train = _pngs(tmp_path / "train", 5, rng)
  (tmp_path / "synthetic").mkdir()
  Image.fromarray(train[3]).save(tmp_path / "synthetic" / "copy.png")  # An exact copy.
  for i in range(2):  # Noise: a correlation near 0 with every training image.
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
        tmp_path / "synthetic" / f"noise{i}.png")
  fifo = tmp_path / "train" / "t9.png"
  os.mkfifo(fifo)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  with _fifo_watchdog([fifo], seconds=150):
    done = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/audit.py", f"--workdir={tmp_path / 'out'}",
         *_audit_inputs(tmp_path / "synthetic", tmp_path / "train")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
  assert done.returncode == 0, done.stderr
  warnings = [line for line in done.stderr.splitlines() if "not regular files" in line or
              "not a regular file" in line]
  assert len(warnings) == 1 and "t9.png (a FIFO)" in warnings[0], done.stderr
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["train"]["count"] == 5 and summary["num_memorized"] == 1


# ----------------------------------------------------------------------------------------------
# Item 14: Kermany chest x-rays.


def _kermany(manual_dir):
  """Six 48x48 JPEGs in the Kermany layout; returns their paths by relative path."""
  rng = np.random.default_rng(2)
  paths = {}
  for relpath in KERMANY_TRAIN + KERMANY_TEST:
    path = manual_dir / "chest_xray" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[:48, :48]
    pixels = 128 + 90 * np.sin(x / rng.uniform(3, 8)) * np.cos(y / 5) + rng.normal(0, 8, (48, 48))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)
    paths[relpath] = path
  return paths


def _prepare(manual_dir, data_dir, strict=False):
  return prepare_data.prepare(DATASET, str(manual_dir), str(data_dir), strict, None)


def _train_images(data_dir):
  source = sources.TfdsSource("cxr_pneumonia", "64", "train", data_dir=str(data_dir))
  return dict(zip(source.ids(), source.read(0, len(source), dtype=None)))


def test_kermany_skips_a_truncated_jpeg_and_counts_it(tmp_path, caplog):
  paths = _kermany(tmp_path / "manual")
  truncated = paths[KERMANY_TRAIN[1]]
  whole = truncated.read_bytes()
  truncated.write_bytes(whole[:len(whole) // 2])
  with pytest.raises(OSError, match="truncated"):  # The file really is truncated.
    with Image.open(truncated) as image:
      image.load()
  fifo = tmp_path / "manual" / "chest_xray" / "train" / "NORMAL" / "IM-0009-0001.jpeg"
  os.mkfifo(fifo)

  with _fifo_watchdog([fifo]):
    with caplog.at_level(logging.WARNING, logger="memjax.data.cxr"):
      summary = _prepare(tmp_path / "manual", tmp_path / "data")
    assert "train 4, test 1 examples" in summary and "skipped files: 2" in summary
    warned = [r.getMessage() for r in caplog.records]
    assert any(str(truncated) in w and "cannot be decoded" in w for w in warned), warned
    assert any(str(fifo) in w and "is a FIFO" in w for w in warned), warned
    metadata = tfds.builder(DATASET, data_dir=str(tmp_path / "data")).info.metadata
    assert metadata["num_skipped_files"] == 2
    assert sorted(metadata["skipped_files"]) == [KERMANY_TRAIN[1],
                                                 "train/NORMAL/IM-0009-0001.jpeg"]
    kept = _train_images(tmp_path / "data")
    assert sorted(kept) == sorted(set(KERMANY_TRAIN) - {KERMANY_TRAIN[1]})
    for relpath, image in kept.items():
      np.testing.assert_array_equal(image, cxr.preprocess(str(paths[relpath]), 64)[..., 0])

    # --strict: the first file that would be skipped is a one-line error naming it.
    with pytest.raises(ValueError) as error:
      _prepare(tmp_path / "manual", tmp_path / "strict", strict=True)
    assert str(fifo) in _one_line(error.value) and "strict" in str(error.value)


# ----------------------------------------------------------------------------------------------
# Item 14: a truncated (or damaged) array_record file of a prepared data set.


def test_truncated_array_record_is_one_line_and_a_rerun_rebuilds_it(tmp_path, caplog):
  _kermany(tmp_path / "manual")
  _prepare(tmp_path / "manual", tmp_path / "data")
  expected = _train_images(tmp_path / "data")
  version = tmp_path / "data" / "cxr_pneumonia" / "64" / "1.0.0"
  (shard,) = version.glob("cxr_pneumonia-train.array_record-*")
  size = shard.stat().st_size
  os.truncate(shard, size // 2)

  with pytest.raises(ValueError) as error:
    sources.TfdsSource("cxr_pneumonia", "64", "train", data_dir=str(tmp_path / "data"))
  message = _one_line(error.value)
  assert str(shard) in message and "truncated" in message and "re-run the preparation" in message
  assert (f"memjax --config=prepare --config.prepare.dataset={DATASET} "
          f"--config.prepare.manual_dir=DIR --config.data.data_dir={tmp_path / 'data'}") in message

  # The command that the message gives rebuilds the data set (a prepared one is otherwise kept).
  with caplog.at_level(logging.WARNING, logger="memjax.data.tfds_builder"):
    _prepare(tmp_path / "manual", tmp_path / "data")
  assert any(str(shard) in r.getMessage() and "preparing the data set again" in r.getMessage()
             for r in caplog.records)
  assert shard.stat().st_size == size
  rebuilt = _train_images(tmp_path / "data")
  assert sorted(rebuilt) == sorted(expected)
  for key, image in expected.items():
    np.testing.assert_array_equal(rebuilt[key], image)

  # Damaged bytes inside a record (the index intact): the read names the file.
  data = bytearray(shard.read_bytes())
  data[200:400] = bytes(255 - b for b in data[200:400])
  shard.write_bytes(bytes(data))
  source = sources.TfdsSource("cxr_pneumonia", "64", "train", data_dir=str(tmp_path / "data"))
  with pytest.raises(ValueError) as error:
    source.read(0, len(source))
  message = _one_line(error.value)
  assert str(shard) in message and "corrupt" in message and f"remove {version}" in message


# ----------------------------------------------------------------------------------------------
# Item 14: a killed preparation, and two at once.

_PAUSED_PREPARATION = textwrap.dedent("""
    import pathlib, sys, time
    from memjax.data import cxr
    from tools import prepare_data
    manual_dir, data_dir, marker = sys.argv[1:]
    decode = cxr.preprocess
    calls = []
    def pausing(path, size):
      calls.append(path)
      if len(calls) == 3:  # Mid-build: some examples are written, the split is not.
        pathlib.Path(marker).touch()
        time.sleep(600)
      return decode(path, size)
    cxr.preprocess = pausing
    prepare_data.prepare("cxr_pneumonia/64", manual_dir, data_dir, False, None)
""")


def test_killed_preparation_is_cleaned_up_and_never_read(tmp_path, caplog):
  _kermany(tmp_path / "manual")
  data_dir, marker = tmp_path / "data", tmp_path / "paused"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  child = subprocess.Popen(
      [sys.executable, "-c", _PAUSED_PREPARATION, str(tmp_path / "manual"), str(data_dir),
       str(marker)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 90
    while not marker.exists():
      assert child.poll() is None, child.stderr.read().decode()
      assert time.monotonic() < deadline, "the child preparation never reached its pause"
      time.sleep(0.05)
    # A second preparation while the first runs stops at once, naming the first.
    with pytest.raises(ValueError) as error:
      _prepare(tmp_path / "manual", data_dir)
    assert f"process {child.pid}" in _one_line(error.value)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
    child.stderr.close()

  config_dir = data_dir / "cxr_pneumonia" / "64"
  (left,) = config_dir.glob("incomplete.*")  # What the killed preparation left ...
  assert not (config_dir / "1.0.0").exists()
  with pytest.raises(FileNotFoundError) as error:  # ... is never read as the data set.
    sources.TfdsSource("cxr_pneumonia", "64", "train", data_dir=str(data_dir))
  assert "is not prepared" in _one_line(error.value) and str(left) in str(error.value)

  with caplog.at_level(logging.WARNING, logger="memjax.data.tfds_builder"):
    summary = _prepare(tmp_path / "manual", data_dir)
  assert "train 5, test 1 examples" in summary
  assert any(str(left) in r.getMessage() and "interrupted" in r.getMessage()
             for r in caplog.records)
  assert not list(config_dir.glob("incomplete.*"))
  assert sorted(_train_images(data_dir)) == sorted(KERMANY_TRAIN)


# ----------------------------------------------------------------------------------------------
# Item 14: BraTS volumes whose slices all fail the brain-slice filter.

SHAPE = (12, 12, 8)  # X, Y, Z.
SLICE_SIZE = 16


def _subject(rng, radius):
  """Five channels: a disc of random tissue of `radius` pixels on every axial slice."""
  x, y = np.mgrid[:SHAPE[0], :SHAPE[1]] - (SHAPE[0] - 1) / 2
  disc = ((x**2 + y**2) <= radius**2)[..., None]
  volumes = {c: (rng.integers(1, 3000, SHAPE) * disc).astype(np.int16)
             for c in ("t1", "t2", "flair", "t1ce")}
  volumes["seg"] = (rng.choice(np.array([0, 1, 2, 4], np.uint8), SHAPE) * disc).astype(np.uint8)
  return volumes


def _write_subject(root, subject_id, volumes):
  (root / subject_id).mkdir(parents=True)
  for channel, volume in volumes.items():
    nib.save(nib.Nifti1Image(volume, np.eye(4)),
             str(root / subject_id / f"{subject_id}_{channel}.nii.gz"))


def _coverage(t1):
  """Per axial slice, the fraction of the 16x16 padded slice with T1 above 50 of 255."""
  scaled = t1.astype(np.float64) / t1.max() * 255
  return np.count_nonzero(scaled > 50, axis=(0, 1)) / SLICE_SIZE**2


def _builder(data_dir, num_test):
  config = brats.BratsConfig(name="slices_faults", kind="slices", slice_size=SLICE_SIZE,
                             num_test_subjects=num_test)
  return brats.Brats2020(config=config, data_dir=str(data_dir))


def test_brats_without_a_kept_slice_is_one_line_saying_why(tmp_path):
  rng = np.random.default_rng(3)
  root = tmp_path / "manual" / "MICCAI_BraTS2020_TrainingData"
  best = 0.0
  for i in range(1, 4):
    volumes = _subject(rng, radius=1.5)  # 9 of 256 pixels: 3.5% of each slice at most.
    _write_subject(root, f"BraTS20_Training_{i:03d}", volumes)
    best = max(best, _coverage(volumes["t1"]).max())
  assert 0 < best <= 0.15
  with pytest.raises(ValueError) as error:
    _builder(tmp_path / "data", num_test=1).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  message = _one_line(error.value)
  assert "No examples were yielded" not in message
  for fragment in ("brain-slice filter", "more than 15% of its 16x16 pixels have T1 above 50",
                   f"the best slice covers {best:.1%}", str(root), "train split"):
    assert fragment in message, (fragment, message)
  train_ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 4)]
  assert sum(subject_id in message for subject_id in train_ids) == 2  # The 2 train subjects.
  assert not list((tmp_path / "data").rglob("incomplete.*"))


def test_brats_skips_a_subject_without_kept_slice_or_with_a_fifo(tmp_path, caplog):
  rng = np.random.default_rng(4)
  root = tmp_path / "manual" / "MICCAI_BraTS2020_TrainingData"
  ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 6)]
  test_id = ids[np.random.default_rng(0).permutation(len(ids))[-1]]  # split_seed 0.
  empty_id, fifo_id, *good_train = [i for i in ids if i != test_id]
  kept = 0
  for subject_id in ids:
    volumes = _subject(rng, radius=1.5 if subject_id == empty_id else 5.0)
    _write_subject(root, subject_id, volumes)
    if subject_id in good_train:
      kept += int(np.count_nonzero(_coverage(volumes["t1"]) > 0.15))
  fifo = root / fifo_id / f"{fifo_id}_t1.nii.gz"
  fifo.unlink()
  os.mkfifo(fifo)

  builder = _builder(tmp_path / "data", num_test=1)
  with _fifo_watchdog([fifo]), caplog.at_level(logging.WARNING, logger="memjax.data.brats"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  assert builder.info.splits["train"].num_examples == kept > 0
  metadata = builder.info.metadata
  assert metadata["num_skipped_subjects"] == 2
  assert "brain-slice filter" in metadata["skipped_subjects"][empty_id]
  assert f"{fifo} is a FIFO" in metadata["skipped_subjects"][fifo_id]
  assert sorted(metadata["train_subjects"]) == sorted(good_train)
  warned = " ".join(r.getMessage() for r in caplog.records)
  assert empty_id in warned and str(fifo) in warned
