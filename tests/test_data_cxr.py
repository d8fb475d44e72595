"""cxr_pneumonia on fake Kermany JPEGs, checked against numpy; and tools/prepare_data.py."""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from memjax.data import cxr

tfds.disable_progress_bar()

REPO = pathlib.Path(__file__).resolve().parent.parent
# (relative path, (width, height), RGB?, patient id)
FILES = [
    ("train/NORMAL/IM-0115-0001.jpeg", (64, 48), False, "IM-0115"),
    ("train/NORMAL/NORMAL2-IM-0123-0001.jpeg", (48, 60), True, "NORMAL2-IM-0123"),
    ("train/PNEUMONIA/person1_bacteria_1.jpeg", (51, 48), False, "person1"),
    ("train/PNEUMONIA/person1_virus_6.jpeg", (48, 48), False, "person1"),
    ("train/PNEUMONIA/BACTERIA-1008087-0001.jpeg", (61, 48), True, "1008087"),
    ("test/NORMAL/IM-0001-0001.jpeg", (50, 48), False, "IM-0001"),
    ("test/PNEUMONIA/person100_bacteria_475.jpeg", (48, 52), False, "person100"),
    ("val/PNEUMONIA/scan copy.jpeg", (48, 48), False, "file:scan copy.jpeg"),
]
SIZE = 16  # Every fake image's centre square is 48 pixels: a 3x3 box average per pixel.


def _write_images(manual_dir):
  rng = np.random.default_rng(0)
  for relpath, (width, height), rgb, _ in FILES:
    path = manual_dir / "chest_xray" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[:height, :width]
    base = 128 + 80 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 10, (height, width))
    if rgb:
      pixels = np.stack([base, base * 0.8, 255 - base], axis=-1)
    else:
      pixels = base
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)
  (manual_dir / "chest_xray" / "train" / "NORMAL" / ".DS_Store").write_bytes(b"ignored")


def expected_image(path):
  """Gray (ITU-R 601 luma, as Pillow rounds it), centre 48x48 square, 3x3 means, rounded."""
  with Image.open(path) as image:
    pixels = np.asarray(image).astype(np.int64)
  if pixels.ndim == 3:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    pixels = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
  height, width = pixels.shape
  top, left = (height - 48) // 2, (width - 48) // 2
  square = pixels[top:top + 48, left:left + 48].astype(np.float64)
  return np.floor(square.reshape(16, 3, 16, 3).mean(axis=(1, 3)) + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  base = tmp_path_factory.mktemp("cxr")
  _write_images(base / "manual")
  builder = cxr.CxrPneumonia(config=cxr.CxrConfig(name="16", size=SIZE),
                             data_dir=str(base / "data"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(base / "manual")))
  return builder, base


def test_images_labels_and_patients(built):
  builder, base = built
  data = builder.as_data_source()
  assert sorted(data) == ["test", "train", "val"]
  seen = set()
  for split in data:
    for example in data[split]:
      relpath = example["file_name"].decode()
      entry = next(f for f in FILES if f[0] == relpath)
      seen.add(relpath)
      assert relpath.startswith(split + "/")
      assert example["patient_id"].decode() == entry[3]
      assert cxr.LABELS[example["label"]] == relpath.split("/")[1]
      assert example["image"].shape == (SIZE, SIZE, 1) and example["image"].dtype == np.uint8
      np.testing.assert_array_equal(
          example["image"][..., 0], expected_image(base / "manual" / "chest_xray" / relpath),
          err_msg=relpath)
  assert seen == {f[0] for f in FILES}
  assert builder.info.metadata["num_unparsed_file_names"] == 1


@pytest.mark.parametrize("name, patient", [
    ("person1946_bacteria_4874.jpeg", "person1946"),
    ("person1_virus_6.jpeg", "person1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("VIRUS-1011335-0001.jpeg", "1011335"),
    ("person1_bacteria.jpeg", None),
    ("IM-0115.jpeg", None),
    ("notes.txt", None),
])
def test_patient_id_parser(name, patient):
  assert cxr.patient_id(name) == patient


def test_unknown_names_fail_when_strict(built, tmp_path):
  _, base = built
  builder = cxr.CxrPneumonia(config=cxr.CxrConfig(name="16", size=SIZE),
                             data_dir=str(tmp_path), strict=True)
  with pytest.raises(ValueError, match="scan copy.jpeg"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(base / "manual")))


def test_prepare_data_cli(built, tmp_path):
  _, base = built
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  tool = str(REPO / "tools" / "prepare_data.py")
  done = subprocess.run(
      [sys.executable, tool, "--dataset=cxr_pneumonia/64", f"--manual_dir={base / 'manual'}",
       f"--data_dir={tmp_path / 'data'}"], capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr
  assert "cxr_pneumonia/64/1.0.0 prepared" in done.stdout and "train 5" in done.stdout
  assert (tmp_path / "data" / "cxr_pneumonia" / "64" / "1.0.0" / "dataset_info.json").is_file()

  missing = subprocess.run(
      [sys.executable, tool, "--dataset=brats2020/slices", f"--manual_dir={tmp_path / 'none'}",
       f"--data_dir={tmp_path / 'data'}"], capture_output=True, text=True, env=env, check=False)
  assert missing.returncode == 2
  lines = missing.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: brats2020")
  assert "CBICA" in lines[0] and "BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}" in lines[0]
