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

A preparation is never half-visible: TFDS writes into `incomplete.XXXXXX_VERSION/` beside the
version folder and renames it into place at the end. `download_and_prepare` also holds a lock
on the config folder (a second preparation fails fast, naming the holder), removes the
`incomplete.*` folders that a killed preparation left, and rebuilds a prepared data set whose
array_record files are truncated or missing (`damaged_files` finds them; `check_files` is the
one-line error that readers raise).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import io
import logging
import os
import re
import shutil
import socket
import types
from typing import Any, TypeVar

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from memjax.data.sources import base

T = TypeVar("T")
R = TypeVar("R")

DATA_DIR_ENV = "MEMJAX_DATA_DIR"

_logger = logging.getLogger(__name__)


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
    """TFDS's `download_and_prepare`, able to write splits over 1 GB without TensorFlow, under
    a lock, after removing what a killed preparation left, and rebuilding damaged files."""
    with _preparation_lock(self.data_path), _bucket_files_without_tf():
      _remove_interrupted_preparations(self.data_path)
      if self.data_path.exists():
        damaged = damaged_files(self)
        if damaged:
          _logger.warning("%s: %s; preparing the data set again", self.info.full_name,
                          "; ".join(f"{path} {problem}" for path, problem in damaged))
          config = kwargs.get("download_config") or tfds.download.DownloadConfig()
          kwargs["download_config"] = dataclasses.replace(
              config, download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)
      # TFDS prints "Downloading and preparing dataset ..." on stdout: nothing is downloaded
      # (builders read local files), and stdout holds the workflow's summary.
      with contextlib.redirect_stdout(io.StringIO()):
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


def prepare_command(builder: tfds.core.DatasetBuilder) -> str:
  """The memjax command line (the prepare workflow) that prepares `builder`'s data set."""
  config = builder.builder_config
  dataset = builder.name if config is None else f"{builder.name}/{config.name}"
  extra = ""
  if getattr(config, "num_subjects", None) is not None:  # brats.subset_config
    dataset = f"{builder.name}/{config.kind}"
    extra = f" --config.prepare.num_subjects={config.num_subjects}"
  manual = " --config.prepare.manual_dir=DIR" if getattr(builder, "MANUAL_DIR_ERROR", "") else ""
  return (f"memjax --config=prepare --config.prepare.dataset={dataset}{manual}{extra} "
          f"--config.data.data_dir={builder.data_dir_root}")


def damaged_files(builder: tfds.core.DatasetBuilder,
                  split: str | None = None) -> list[tuple[str, str]]:
  """(path, problem) for each array_record file of `split` (None: every split) that is missing,
  not a regular file, truncated, or holds another number of records than the data set's info.

  Only each file's footer is read (the array_record index), so this is cheap: a truncated file
  has lost its footer, which array_record would otherwise report only on the first read, as a
  RuntimeError that names no file.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  splits = builder.info.splits
  damaged, seen = [], set()
  for name in ([split] if split is not None else list(splits.keys())):
    for instruction in splits[name].file_instructions:
      path = os.fspath(instruction.filename)
      if path in seen:
        continue
      seen.add(path)
      problem = base.not_a_regular_file(path)
      if problem is not None:
        damaged.append((path, "is missing" if problem == "missing" else f"is {problem}"))
        continue
      try:
        reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
      except (RuntimeError, ValueError, OSError) as e:
        damaged.append((path, f"cannot be opened ({e})"))
        continue
      try:
        if not reader.ok():
          damaged.append((path, f"is truncated or corrupt ({os.path.getsize(path)} bytes; its "
                                "array_record index cannot be read)"))
        elif reader.num_records() != instruction.examples_in_shard:
          damaged.append((path, f"holds {reader.num_records()} records, but the data set's "
                                f"info expects {instruction.examples_in_shard}"))
      finally:
        with contextlib.suppress(RuntimeError):  # A reader that is not ok raises its error.
          reader.close()
  return damaged


def check_files(builder: tfds.core.DatasetBuilder, split: str | None, description: str) -> None:
  """Raises one-line ValueError naming the first damaged file of `split` and the command that
  prepares the data set again (which rebuilds it, see `ArrayRecordBuilder`)."""
  damaged = damaged_files(builder, split)
  if damaged:
    path, problem = damaged[0]
    more = f" (and {len(damaged) - 1} more damaged files)" if len(damaged) > 1 else ""
    raise ValueError(f"{description}: {path} {problem}{more}; re-run the preparation, which "
                     f"rebuilds it: {prepare_command(builder)}")


def interrupted_preparations(data_path: epath.PathLike) -> list[str]:
  """The `incomplete.XXXXXX_VERSION` folders beside `data_path` (.../CONFIG/VERSION)."""
  data_path = epath.Path(data_path)
  # TFDS's temporary folder: "incomplete." + 6 random characters + "_" + the version.
  pattern = re.compile(r"incomplete\.[A-Z0-9]{6}_" + re.escape(data_path.name) + "$")
  if not data_path.parent.exists():
    return []
  return sorted(os.fspath(path) for path in data_path.parent.iterdir()
                if pattern.match(path.name) and path.is_dir())


def _remove_interrupted_preparations(data_path: epath.Path) -> None:
  """Removes what killed preparations left (under the lock, no other preparation is running)."""
  for folder in interrupted_preparations(data_path):
    _logger.warning("removing %s, left by an interrupted preparation", folder)
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _preparation_lock(data_path: epath.Path) -> Iterator[None]:
  """Holds an exclusive lock on the preparation of `data_path`; ValueError naming the holder
  when another process holds it. Local, writable folders only: a bucket cannot be locked, and
  where nothing can be written (a prepared data set on a read-only disk) nothing is prepared."""
  folder = os.fspath(data_path.parent)
  if "://" in folder:
    yield
    return
  import fcntl  # pylint: disable=g-import-not-at-top  (Unix only)

  path = os.path.join(folder, f".prepare-{data_path.name}.lock")
  try:
    os.makedirs(folder, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError:
    fd = None
  if fd is None:
    yield
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
      raise ValueError(f"{data_path} is being prepared by {holder} (it holds {path}); wait for "
                       "it to finish, or stop it and run again") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
  finally:
    os.close(fd)  # Releases the lock; the kernel releases it too when the process is killed.


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
