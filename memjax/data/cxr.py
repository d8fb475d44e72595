"""`cxr_pneumonia`: the pediatric chest x-rays of Kermany et al. (2018), normal or pneumonia.

The data is obtained from Mendeley Data (doi 10.17632/rscbjbr9sj.2; the Kaggle copy
"chest-xray-pneumonia" re-splits it into train/val/test) and never downloaded by memjax.
`manual_dir` holds `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg` (or the split folders
directly); each split folder that exists becomes a split.

Each image is converted to grayscale, centre-cropped to a square (the shorter side) and resized
to the config's size (`256`, `128`, `64`) by area averaging (Pillow's box filter), stored as
uint8 (H, W, 1). Features: image, label (NORMAL or PNEUMONIA), patient_id and file_name (the
path relative to the data's root folder).

Patient ids come from the file names, so that an audit can tell images of one patient apart:
`person123_bacteria_456.jpeg` -> `person123`, `IM-0115-0001.jpeg` -> `IM-0115`,
`NORMAL2-IM-0123-0001.jpeg` -> `NORMAL2-IM-0123` (the Kaggle copy's names), and
`BACTERIA-1008087-0001.jpeg` -> `1008087` (the form of Mendeley's names: the number is taken
as the patient, the last field as the image). A name of another form gets the id `file:<name>`
with a warning, and is counted in the metadata (`strict=True` makes it an error).

A JPEG that cannot be decoded (truncated, corrupt), or an entry that is not a regular file (a
FIFO, a broken link: never opened), is skipped with a warning naming it; the metadata lists the
skipped files with the reason (`skipped_files`) and their count (`num_skipped_files`), and
`strict=True` makes a skip an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import struct
from typing import Any
import zlib

import numpy as np
import tensorflow_datasets as tfds

from memjax.data import preprocessing
from memjax.data import tfds_builder
from memjax.data.sources import base

LABELS = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
JPEG_EXTENSIONS = (".jpeg", ".jpg")

_PATIENT_PATTERNS = (
    re.compile(r"^(?P<id>person\d+)_(?:bacteria|virus)_\d+$"),  # Kaggle pneumonia.
    re.compile(r"^(?P<id>(?:NORMAL2-)?IM-\d+)-\d+$"),  # Kaggle normal.
    re.compile(r"^(?:NORMAL|BACTERIA|VIRUS)-(?P<id>\d+)-\d+$"),  # Mendeley.
)

_logger = logging.getLogger(__name__)


def patient_id(file_name: str) -> str | None:
  """The patient id in a Kermany file name, or None when the name has no known form."""
  stem = os.path.basename(file_name)
  for extension in JPEG_EXTENSIONS:
    if stem.lower().endswith(extension):
      stem = stem[:-len(extension)]
      break
  for pattern in _PATIENT_PATTERNS:
    match = pattern.match(stem)
    if match is not None:
      return match["id"]
  return None


def preprocess(path: str, size: int) -> np.ndarray:
  """A JPEG as a (size, size, 1) uint8 image: grayscale, centre square, box-filtered resize."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as image:
      gray = image.convert("L")
  except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
          struct.error, zlib.error, Image.DecompressionBombError) as e:
    raise ValueError(f"{path} cannot be decoded ({e}); re-copy or remove the file") from e
  width, height = gray.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  square = gray.crop((left, top, left + side, top + side)).convert("F")
  resized = np.asarray(square.resize((size, size), Image.Resampling.BOX), np.float64)
  return preprocessing.to_uint8(resized)[..., None]


def find_images(manual_dir: str) -> tuple[str, dict[str, list[tuple[str, str]]],
                                          dict[str, str]]:
  """The data's root folder; per split present, its (relative path, label) pairs, sorted; and
  the JPEG names that are not regular files (relative path: what it is), which are never opened.
  """
  root = os.path.join(manual_dir, "chest_xray")
  if not os.path.isdir(os.path.join(root, "train")):
    root = manual_dir
  images, not_regular = {}, {}
  for split in SPLITS:
    entries = []
    for label in LABELS:
      folder = os.path.join(root, split, label)
      if not os.path.isdir(folder):
        continue
      for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not name.lower().endswith(JPEG_EXTENSIONS):
          continue
        relpath = f"{split}/{label}/{name}"
        problem = base.not_a_regular_file(os.path.join(folder, name))
        if problem is None:
          entries.append((relpath, label))
        else:
          not_regular[relpath] = f"{os.path.join(folder, name)} is {problem}, not a regular file"
    if entries:
      images[split] = entries
  return root, images, not_regular


@dataclasses.dataclass
class CxrConfig(tfds.core.BuilderConfig):
  """Square images of `size` pixels."""
  size: int = 256


class CxrPneumonia(tfds_builder.ArrayRecordBuilder):
  """Kermany chest x-rays (normal / pneumonia), square grayscale images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [CxrConfig(name=str(size), size=size, description=f"{size}x{size} images.")
                     for size in (256, 128, 64)]
  MANUAL_DIR_ERROR = (
      "the Kermany chest x-rays are obtained from Mendeley Data (doi 10.17632/rscbjbr9sj.2) or "
      "Kaggle's chest-xray-pneumonia; manual_dir must hold "
      "chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg")
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_ERROR

  def __init__(self, *, strict: bool = False, **kwargs: Any):
    self._strict = bool(strict)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.size
    features = tfds.features.FeaturesDict({
        "image": tfds_builder.image_feature((size, size, 1), "Grayscale 0-255."),
        "label": tfds.features.ClassLabel(names=list(LABELS)),
        "patient_id": tfds.features.Text(doc="Parsed from the file name (see the module doc)."),
        "file_name": tfds.features.Text(doc="e.g. train/NORMAL/IM-0115-0001.jpeg"),
    })
    return self._dataset_info(
        features, description=__doc__, homepage="https://data.mendeley.com/datasets/rscbjbr9sj/2",
        citation="Kermany et al., Identifying medical diagnoses and treatable diseases by "
                 "image-based deep learning, Cell 172(5), 2018.")

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    manual_dir = self._manual_dir(dl_manager)
    root, images, not_regular = find_images(manual_dir)
    if "train" not in images:
      raise FileNotFoundError(f"{self.name}: no JPEGs in {root}/train/{{NORMAL,PNEUMONIA}}; "
                              f"{self.MANUAL_DIR_ERROR}")
    self._unparsed: list[str] = []
    self._skipped: dict[str, str] = {}
    self.info.metadata.update(unparsed_file_names=self._unparsed, num_unparsed_file_names=0,
                              skipped_files=self._skipped, num_skipped_files=0)
    for relpath, reason in not_regular.items():
      self._skip(relpath, reason)
    return {split: self._generate_examples(root, entries, split)
            for split, entries in images.items()}

  def _patient_id(self, relpath: str) -> str:
    parsed = patient_id(relpath)
    if parsed is not None:
      return parsed
    message = (f"{relpath}: the file name is none of person<N>_<bacteria|virus>_<K>, "
               "[NORMAL2-]IM-<N>-<K>, <NORMAL|BACTERIA|VIRUS>-<N>-<K> (.jpeg)")
    if self._strict:
      raise ValueError(f"{message}; rename it, or build without strict to give it its own id")
    _logger.warning("%s; its patient id is file:<name>", message)
    self._unparsed.append(relpath)
    self.info.metadata["num_unparsed_file_names"] = len(self._unparsed)
    return f"file:{os.path.basename(relpath)}"

  def _skip(self, relpath: str, reason: str) -> None:
    """Records a skipped file (or, strict, fails naming it and why)."""
    if self._strict:
      raise ValueError(f"{reason} (strict: a file that would be skipped is an error)")
    _logger.warning("%s: skipping %s: %s", self.name, relpath, reason)
    self._skipped[relpath] = reason
    self.info.metadata["num_skipped_files"] = len(self._skipped)

  def _generate_examples(self, root: str, entries: list[tuple[str, str]], split: str):
    size = self.builder_config.size

    def read(entry: tuple[str, str]) -> np.ndarray | ValueError:
      try:
        return preprocess(os.path.join(root, entry[0]), size)
      except ValueError as e:  # Corrupt or truncated: skipped, as the README says.
        return e

    images = tfds_builder.lookahead_map(read, entries)
    images = tfds_builder.progress(images, len(entries), f"{split} images", " images")
    num_written = 0
    for key, ((relpath, label), image) in enumerate(zip(entries, images)):
      if isinstance(image, ValueError):
        self._skip(relpath, str(image))
        continue
      num_written += 1
      yield key, {"image": image, "label": label, "patient_id": self._patient_id(relpath),
                  "file_name": relpath}
    if not num_written:
      # Raised here, with the reason: TFDS would only say "No examples were yielded".
      raise ValueError(f"{self.name}: none of the {len(entries)} JPEGs of the {split} split in "
                       f"{os.path.join(root, split)} could be decoded; the first: "
                       f"{self._skipped[entries[0][0]]}")
