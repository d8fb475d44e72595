"""What memjax's TFDS builders share: array_record output, TF-free features, manual data.

Every builder writes array_record files (random access for grain, and no TensorFlow needed to
write or read them) with images as zlib-compressed uint8 tensors: `tfds.features.Image` would need
TensorFlow to encode PNGs. TFDS stores records in the order of its hash of each example's key;
readers that need a subject's slices in order sort by the `subject_id` and `slice_index`
features. Medical data is never downloaded: builders read a `manual_dir` that the user has filled
from the data's official source.

One part of TFDS needs TensorFlow: once a split's examples pass 1 GB, its writer spills them to
temporary bucket files through `tf.io.gfile`. `ArrayRecordBuilder.download_and_prepare` gives it
plain local files instead when TensorFlow is not installed (see `_bucket_files_without_tf`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
import concurrent.futures
import contextlib
import importlib.util
import os
import types
from typing import Any, TypeVar

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

T = TypeVar("T")
R = TypeVar("R")

DATA_DIR_ENV = "MEMJAX_DATA_DIR"


def default_data_dir() -> str | None:
  """$MEMJAX_DATA_DIR when set, else None: TFDS's default (~/tensorflow_datasets)."""
  return os.environ.get(DATA_DIR_ENV) or None


def image_feature(shape: tuple[int, ...], doc: str) -> tfds.features.Tensor:
  """A uint8 image tensor stored zlib-compressed (lossless, and encoded without TensorFlow)."""
  return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB,
                              doc=doc)


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A generator-based builder that writes array_record files and reads a manual_dir.

  Subclasses set `MANUAL_DIR_ERROR`, a sentence naming where the data is obtained and the layout
  that `manual_dir` must hold (builders that need no manual data leave it empty).
  """

  MANUAL_DIR_ERROR = ""

  def __init__(self, *, file_format: str = "array_record", **kwargs: Any):
    kwargs["data_dir"] = kwargs.get("data_dir") or default_data_dir()
    super().__init__(file_format=file_format, **kwargs)

  def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
    """TFDS's `download_and_prepare`, able to write splits over 1 GB without TensorFlow."""
    with _bucket_files_without_tf():
      super().download_and_prepare(*args, **kwargs)

  def _dataset_info(self, features: tfds.features.FeaturesDict, description: str,
                    homepage: str, citation: str = "") -> tfds.core.DatasetInfo:
    """The DatasetInfo of a builder, with a metadata dict for what the build found.

    Shuffling by key hash stays on: with it off TFDS sorts a whole split in memory at the end.
    """
    return tfds.core.DatasetInfo(
        builder=self, description=description, features=features, homepage=homepage,
        citation=citation, metadata=tfds.core.MetadataDict())

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> str:
    """The user's manual_dir, or FileNotFoundError saying where the data comes from."""
    return check_manual_dir(getattr(dl_manager, "_manual_dir", None), self.name,
                            self.MANUAL_DIR_ERROR)


def check_manual_dir(path: str | os.PathLike | None, dataset: str, instructions: str) -> str:
  """`path` when it is a folder, else FileNotFoundError naming `dataset` and `instructions`."""
  if not path:
    raise FileNotFoundError(f"{dataset} needs manual_dir (memjax never downloads medical data): "
                            f"{instructions}")
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{dataset}: manual_dir {path} does not exist; {instructions}")
  return path


def lookahead_map(function: Callable[[T], R], items: Iterable[T], num_threads: int = 4,
                  lookahead: int | None = None) -> Iterator[R]:
  """`function` over `items`, in order, computed on threads at most `lookahead` items ahead.

  Decoding NIfTI and JPEG files (zlib, libjpeg) releases the GIL, so a few threads keep a
  builder busy while holding only a few decoded volumes in memory.
  """
  lookahead = lookahead or 2 * num_threads
  if num_threads <= 1:
    yield from map(function, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_threads, "memjax-build") as pool:
    pending: collections.deque[concurrent.futures.Future[R]] = collections.deque()
    for item in items:
      pending.append(pool.submit(function, item))
      if len(pending) >= lookahead:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def progress(items: Iterable[T], total: int, desc: str, unit: str) -> Iterable[T]:
  """`items` behind a progress bar with a total; silent after `tfds.disable_progress_bar()`.

  TFDS's own bars count the examples of a split, whose number it cannot know in advance.
  """
  return tfds.core.utils.tqdm(items, total=total, desc=desc, unit=unit, leave=False,
                              mininterval=1.0)


class _ResourceExhaustedError(Exception):
  """Stands for tf.errors.ResourceExhaustedError, which plain files never raise."""
  message = ""


# The names that tensorflow_datasets.core.shuffle uses from TensorFlow, over epath files.
_LOCAL_BUCKET_FILES = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(
        GFile=lambda path, mode="r": epath.Path(path).open(mode),
        exists=lambda path: epath.Path(path).exists(),
        remove=lambda path: epath.Path(path).unlink())),
    errors=types.SimpleNamespace(ResourceExhaustedError=_ResourceExhaustedError))


@contextlib.contextmanager
def _bucket_files_without_tf() -> Iterator[None]:
  """Lets TFDS's shuffler spill to bucket files when TensorFlow is not installed.

  The shuffler keeps up to 1 GB of a split's examples in memory, then writes them to 1000 bucket
  files through `tf.io.gfile`. Without TensorFlow that import fails and the build stops, so for
  the build the shuffler's `tf` is replaced by plain files, and the limit of open files is raised
  as TFDS would raise it on TensorFlow's error. A no-op when TensorFlow is installed.
  """
  if importlib.util.find_spec("tensorflow") is not None:
    yield
    return
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top

  _ensure_open_files_limit(4 * shuffle.BUCKETS_NUMBER)
  saved = shuffle.tf
  shuffle.tf = _LOCAL_BUCKET_FILES
  try:
    yield
  finally:
    shuffle.tf = saved


def _ensure_open_files_limit(minimum: int) -> None:
  """Raises the soft limit of open files to `minimum` (within the hard limit) where it is lower."""
  try:
    import resource  # pylint: disable=g-import-not-at-top  (Unix only)
  except ImportError:
    return
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  wanted = minimum if hard == resource.RLIM_INFINITY else min(minimum, hard)
  if soft != resource.RLIM_INFINITY and soft < wanted:
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
