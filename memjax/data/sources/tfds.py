"""`TfdsSource`: the images of one split of a prepared TFDS data set, which `open_source` opens
for "tfds:NAME[/CONFIG]:SPLIT" (`parse_tfds_spec` splits such a name).

Images are read by random access from the array_record files that memjax's builders write (no
TensorFlow). Ids name the example: `subject:slice` where the data set has `subject_id` and
`slice_index` (BraTS, MNI152 slices), the `file_name` (chest x-rays) or the `subject_id`
(volumes), else the index. `neighbors` gives the previous and next slice of the same subject
present in the split, so an audit can show a match between its neighbouring training slices.
TFDS and memjax's builders are imported when a source is opened, not with this module.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np

from memjax.data.sources import base

_ID_CHUNK = 1024  # Examples whose ids are read per call while indexing the split.

_TFDS_PATTERN = re.compile(
    r"^tfds:(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<config>[A-Za-z0-9_.-]+))?:(?P<split>\S+)$")


def parse_tfds_spec(spec: str) -> tuple[str, str | None, str]:
  """Splits 'tfds:NAME[/CONFIG]:SPLIT' into (name, config or None, split)."""
  match = _TFDS_PATTERN.match(spec)
  if match is None:
    raise ValueError(
        f"malformed TFDS source {spec!r}: expected 'tfds:NAME[/CONFIG]:SPLIT', e.g. "
        "'tfds:brats2020/slices:train' or 'tfds:cxr_pneumonia/256:test[:10%]'")
  return match["name"], match["config"], match["split"]


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsSource(base.ImageSource):
  """The images of one split of a prepared TFDS data set.

  A single-channel image feature (H, W, 1) is read as (H, W), as a folder of gray PNGs is.

  Args:
    name: the data set, e.g. 'brats2020', 'cxr_pneumonia', 'mni152'.
    config: its config, e.g. 'slices' or '64'; None for the default (first) config.
    split: a TFDS split, slices allowed: 'train', 'test[:10%]'.
    data_dir: where the data set was prepared; default $MEMJAX_DATA_DIR, else TFDS's default.
    image_key: the image feature.
  """

  def __init__(self, name: str, config: str | None = None, split: str = "train", *,
               data_dir: str | None = None, image_key: str = "image"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    # Registers memjax's builders, so that their names resolve.
    from memjax.data import brats, cxr, mni152  # pylint: disable=g-import-not-at-top,unused-import
    from memjax.data import tfds_builder  # pylint: disable=g-import-not-at-top

    full_name = name if config is None else f"{name}/{config}"
    data_dir = data_dir or tfds_builder.default_data_dir()
    self.description = f"tfds:{full_name}:{split}"
    try:
      builder = tfds.builder(full_name, data_dir=data_dir)
    except ValueError as e:  # tfds's DatasetNotFoundError lists every data set it knows.
      raise FileNotFoundError(
          f"{self.description}: no data set {full_name!r} is registered or prepared in "
          f"{data_dir or 'the TFDS default data_dir'}; memjax prepares brats2020, brats2021, "
          "cxr_pneumonia and mni152 with memjax --config=prepare "
          "--config.prepare.dataset=NAME/CONFIG") from e
    if not builder.is_prepared():
      interrupted = tfds_builder.interrupted_preparations(builder.data_path)
      raise FileNotFoundError(
          f"{self.description} is not prepared in {builder.data_dir}"
          + (f" (an interrupted preparation left {interrupted[0]}, which preparing removes)"
             if interrupted else "")
          + f"; prepare it with {tfds_builder.prepare_command(builder)} (and set "
          f"${tfds_builder.DATA_DIR_ENV} to that data_dir)")
    features = builder.info.features
    if image_key not in features:
      raise ValueError(f"{self.description} has no feature {image_key!r}; it has "
                       f"{sorted(features.keys())}")
    try:
      self._data = builder.as_data_source(split=split)
    except (ValueError, KeyError, AssertionError) as e:
      raise ValueError(f"{self.description}: split {split!r} cannot be read ({e}); the splits "
                       f"are {sorted(builder.info.splits.keys())}") from e
    # A truncated file fails here, in one line naming it, not on the first read.
    tfds_builder.check_files(builder, split, self.description)
    self._files = [(os.fspath(instruction.filename), int(instruction.take))
                   for instruction in builder.info.splits[split].file_instructions]
    shape = tuple(int(s) for s in features[image_key].shape)
    self._squeeze = len(shape) >= 3 and shape[-1] == 1
    self._set_layout(len(self._data), shape[:-1] if self._squeeze else shape,
                     features[image_key].np_dtype)
    self._image_key = image_key
    self._builder = builder
    self._split = split
    self._id_keys = [key for key in ("subject_id", "slice_index", "file_name") if key in features]
    self._lock = threading.Lock()
    self._ids: list[str] | None = None
    self._neighbors: np.ndarray | None = None  # (N, 2): previous, next; -1 for none.

  def _examples(self, data: Any, start: int, stop: int) -> list[Any]:
    """Examples [start, stop) of `data`; ValueError naming the file when they cannot be read."""
    try:
      return data.__getitems__(list(range(start, stop)))
    except (RuntimeError, ValueError, OSError) as e:  # array_record's errors name no file.
      from memjax.data import tfds_builder  # pylint: disable=g-import-not-at-top

      files, end = [], 0
      for path, count in self._files:
        if end < stop and start < end + count:
          files.append(path)
        end += count
      detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      which = f"example {start}" if stop - start == 1 else f"examples {start}-{stop - 1}"
      raise ValueError(
          f"{self.description}: {which} cannot be read from "
          f"{', '.join(files) or self._builder.data_path} ({detail}); the file is corrupt: "
          f"remove {self._builder.data_path} and prepare the data set again: "
          f"{tfds_builder.prepare_command(self._builder)}") from e

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty((stop - start, *self.shape), dtype)
    if stop > start:
      for row, example in enumerate(self._examples(self._data, start, stop)):
        out[row] = example[self._image_key].reshape(self.shape)
    return out

  def _index(self) -> None:
    """Reads every example's id fields (not its image) once, for ids and neighbours."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    with self._lock:
      if self._ids is not None:
        return
      n = len(self)
      if not self._id_keys:
        self._ids = [str(i) for i in range(n)]
        self._neighbors = np.full((n, 2), -1, np.int64)
        return
      data = self._builder.as_data_source(
          split=self._split, decoders={self._image_key: tfds.decode.SkipDecoding()})
      subjects, slices, names = [], [], []
      for start in range(0, n, _ID_CHUNK):
        for example in self._examples(data, start, min(n, start + _ID_CHUNK)):
          subjects.append(_text(example.get("subject_id", "")))
          slices.append(int(example.get("slice_index", -1)))
          names.append(_text(example.get("file_name", "")))
      if "subject_id" in self._id_keys and "slice_index" in self._id_keys:
        ids = [f"{subject}:{z}" for subject, z in zip(subjects, slices)]
      elif "file_name" in self._id_keys:
        ids = names
      elif "subject_id" in self._id_keys:
        ids = subjects
      else:
        ids = [str(i) for i in range(n)]
      neighbors = np.full((n, 2), -1, np.int64)
      if "subject_id" in self._id_keys and "slice_index" in self._id_keys:
        order = sorted(range(n), key=lambda i: (subjects[i], slices[i]))
        for before, after in zip(order[:-1], order[1:]):
          if subjects[before] == subjects[after]:
            neighbors[after, 0], neighbors[before, 1] = before, after
      self._ids, self._neighbors = ids, neighbors

  def image_id(self, index: int) -> str:
    index = self._check_index(index)
    self._index()
    return self._ids[index]

  def ids(self) -> list[str]:
    self._index()
    return list(self._ids)

  def neighbors(self, index: int) -> tuple[int | None, int | None]:
    index = self._check_index(index)
    self._index()
    previous, following = (int(i) for i in self._neighbors[index])
    return (previous if previous >= 0 else None, following if following >= 0 else None)
