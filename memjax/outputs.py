"""Results that are whole or absent: staged writes, one run per work dir, errors that name the file.

* `Staging`: every output of a step is written into a hidden staging folder beside its final
  place, then renamed into place at the end, the marker file (summary.json) last. A step that
  fails (an error, a full disk, a killed process) leaves the previous results as they were; a
  process killed in the middle of the renames leaves no marker, so the folder reads as incomplete.
* `WorkdirLock`: an exclusive lock (flock) on a work dir for the whole run. A second run into the
  same work dir fails at once, naming the holder's pid. The kernel drops the lock when its holder
  dies, however it dies.
* `writing`: a full disk becomes an error that names the file and the space it needed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import shutil
import time
from collections.abc import Iterable, Iterator

LOCK_FILE = ".memjax.lock"
_STAGING_PREFIX = ".staging-"


def _free_bytes(path: pathlib.Path) -> int | None:
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


@contextlib.contextmanager
def writing(path: str | pathlib.Path, size_hint: int | None = None) -> Iterator[None]:
  """Turns "no space left on device" while writing `path` into an error that names the file."""
  try:
    yield
  except OSError as error:
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    path = pathlib.Path(path)
    free = _free_bytes(path.parent if path.parent.exists() else pathlib.Path("."))
    need = f"about {_size(size_hint)}" if size_hint else "more space"
    have = f"; {_size(free)} free there" if free is not None else ""
    raise OSError(f"no space left on the device to write {path}: it needs {need}"
                  f"{have}. Free some space or choose another --workdir; the previous results "
                  "are untouched") from error


def _size(count: int | None) -> str:
  if count is None:
    return "an unknown amount"
  for unit in ("bytes", "KB", "MB", "GB", "TB"):
    if count < 1024 or unit == "TB":
      return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
    count /= 1024
  return f"{count} bytes"


class Staging:
  """A hidden folder in `out_dir` that a step writes its outputs into, committed all at once.

    with outputs.Staging(out_dir, marker="summary.json", owned=AUDIT_FILES) as staging:
      (staging.path / "matches.csv").write_text(...)
      staging.commit()

  `commit` renames every staged file into `out_dir`: the marker is removed first and renamed
  last, and files of `owned` (this step's outputs) that the new run did not write are removed,
  so no result of an earlier run is left beside the new ones. Leaving the block without a commit
  (an error) deletes the staged files and leaves `out_dir` as it was.
  """

  def __init__(self, out_dir: str | pathlib.Path, marker: str, owned: Iterable[str] = ()):
    self.out_dir = pathlib.Path(out_dir)
    self.marker = marker
    self.owned = tuple(owned)
    self.path = self.out_dir / f"{_STAGING_PREFIX}{os.getpid()}-{time.monotonic_ns()}"

  def __enter__(self) -> Staging:
    self.out_dir.mkdir(parents=True, exist_ok=True)
    for stale in self.out_dir.glob(_STAGING_PREFIX + "*"):  # left by a killed run
      shutil.rmtree(stale, ignore_errors=True)
    self.path.mkdir()
    return self

  def __exit__(self, *exc_info) -> None:
    shutil.rmtree(self.path, ignore_errors=True)

  def commit(self) -> None:
    written = sorted(p.name for p in self.path.iterdir())
    if self.marker not in written:
      raise RuntimeError(f"{self.marker} was not written to {self.path}")
    (self.out_dir / self.marker).unlink(missing_ok=True)  # incomplete until it is back
    for name in self.owned:
      if name not in written and name != self.marker:
        (self.out_dir / name).unlink(missing_ok=True)
    for name in written:
      if name != self.marker:
        os.replace(self.path / name, self.out_dir / name)
    os.replace(self.path / self.marker, self.out_dir / self.marker)


class WorkdirLock:
  """Holds an exclusive lock on `workdir` (a file `.memjax.lock` in it) while the run lasts."""

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    self._file = None

  def __enter__(self) -> WorkdirLock:
    self.workdir.mkdir(parents=True, exist_ok=True)
    path = self.workdir / LOCK_FILE
    handle = open(path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "unknown"
      handle.close()
      raise OSError(f"the work dir {self.workdir} is in use by another memjax run "
                    f"(pid {holder}); wait for it to finish, or give another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
