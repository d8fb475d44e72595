"""Results that are whole or absent: staged writes, one run per work dir, errors that name the file.

* `Staging`: every output of a step is written into a hidden generation folder, which one
  atomic symlink swap (`.current`) then makes the results that `out_dir`'s files name. A step
  that fails (an error, a full disk, a process killed at any instant) leaves the previous
  results as they were: a reader sees the whole old result or the whole new one, never a mix.
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
import signal
import time
from collections.abc import Iterable, Iterator

LOCK_FILE = ".memjax.lock"
_GENERATION_PREFIX = ".generation-"
_LEGACY_STAGING_PREFIX = ".staging-"  # an older memjax's staging folders
_CURRENT = ".current"


def free_bytes(path: pathlib.Path) -> int | None:
  """The bytes free on `path`'s file system (None when it cannot be read)."""
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


@contextlib.contextmanager
def writing(path: str | pathlib.Path, size_hint: int | None = None) -> Iterator[None]:
  """Turns "no space left on device" (or the file size limit) while writing `path` into an error
  that names the file and the space it needs."""
  try:
    yield
  except OSError as error:
    if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      raise
    path = pathlib.Path(path)
    free = free_bytes(path.parent if path.parent.exists() else pathlib.Path("."))
    if path.parent.name.startswith(_GENERATION_PREFIX):  # named where a reader will find it
      path = path.parent.parent / path.name
    need = f"about {size_text(size_hint)}" if size_hint else "more space"
    if error.errno == errno.EFBIG:  # past the process's file size limit, not a full disk
      raise OSError(f"the file size limit (ulimit -f) stopped the write of {path}: it needs "
                    f"{need}. Raise the limit; the previous results are untouched") from error
    have = f"; {size_text(free)} free there" if free is not None else ""
    raise OSError(f"no space left on the device to write {path}: it needs {need}"
                  f"{have}. Free some space or choose another --workdir; the previous results "
                  "are untouched") from error


def size_text(count: int | None) -> str:
  """`count` bytes in words: '512 bytes', '1.5 MB'."""
  if count is None:
    return "an unknown amount"
  for unit in ("bytes", "KB", "MB", "GB", "TB"):
    if count < 1024 or unit == "TB":
      return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
    count /= 1024
  return f"{count} bytes"


class Staging:
  """A hidden generation folder in `out_dir` that a step writes its outputs into, made visible
  in one atomic step.

    with outputs.Staging(out_dir, marker="summary.json", owned=AUDIT_FILES) as staging:
      (staging.path / "matches.csv").write_text(...)
      staging.commit()

  `out_dir` holds the results through symbolic links: `out_dir/matches.csv` ->
  `.current/matches.csv`, and `.current` -> `.generation-<id>`, the folder of one whole run.
  `commit` first adds the links that the new generation needs (while `.current` still names the
  old one they resolve to the old files, or to nothing where the old run wrote no such file),
  then swaps `.current` to the new generation with one rename, the only step that changes what a
  reader sees, then removes the links to files of `owned` that the new run did not write and
  the old generation. A process killed at any instant leaves `out_dir` reading as the whole old
  result or the whole new one, never a mix; the next run deletes any generation that `.current`
  does not name. Leaving the block without a commit (an error) deletes the staged files and
  leaves `out_dir` as it was.

  A folder of an older memjax, with the results as plain files, is first turned into a
  generation of its own (the files hard-linked into it, then each replaced by its link: same
  contents at every instant).
  """

  def __init__(self, out_dir: str | pathlib.Path, marker: str, owned: Iterable[str] = ()):
    self.out_dir = pathlib.Path(out_dir)
    self.marker = marker
    self.owned = tuple(owned)
    self.path = self.out_dir / f"{_GENERATION_PREFIX}{os.getpid()}-{time.monotonic_ns()}"

  def __enter__(self) -> Staging:
    self.out_dir.mkdir(parents=True, exist_ok=True)
    current = current_generation(self.out_dir)
    for stale in [*self.out_dir.glob(_GENERATION_PREFIX + "*"),  # left by a killed run
                  *self.out_dir.glob(_LEGACY_STAGING_PREFIX + "*")]:
      if current is None or stale.name != current.name:
        shutil.rmtree(stale, ignore_errors=True)
    for link in self.out_dir.glob(_CURRENT + ".*"):  # a swap that a kill cut short
      link.unlink(missing_ok=True)
    self.path.mkdir()
    return self

  def __exit__(self, *exc_info) -> None:
    if current_generation(self.out_dir) != self.path:
      shutil.rmtree(self.path, ignore_errors=True)

  def commit(self) -> None:
    written = sorted(p.name for p in self.path.iterdir())
    if self.marker not in written:
      raise RuntimeError(f"{self.marker} was not written to {self.path}")
    _commit_step("staged")
    names = sorted(set(written) | set(self.owned))
    old = current_generation(self.out_dir)
    if old is None:
      old = self._adopt_plain_files(names)
    else:  # an adoption that a kill cut short: link the files it had hard-linked
      for name in names:
        plain = self.out_dir / name
        if (plain.is_file() and not plain.is_symlink() and (old / name).is_file()
            and os.path.samefile(plain, old / name)):
          _atomic_symlink(f"{_CURRENT}/{name}", plain)
    for name in written:
      link = self.out_dir / name
      if not _is_our_link(link):
        _atomic_symlink(f"{_CURRENT}/{name}", link)
        _commit_step(f"linked {name}")
    _atomic_symlink(self.path.name, self.out_dir / _CURRENT)  # the one visible step
    _fsync_dir(self.out_dir)
    _commit_step("swapped")
    for name in names:
      link = self.out_dir / name
      if name not in written and (_is_our_link(link) or link.is_file() and name in self.owned):
        link.unlink()  # a file the new run did not write, of the old run or an older one
        _commit_step(f"unlinked {name}")
    if old is not None and old != self.path:
      shutil.rmtree(old, ignore_errors=True)
    _commit_step("cleaned")

  def _adopt_plain_files(self, names: list[str]) -> pathlib.Path | None:
    """Turns the plain result files of `names` in `out_dir` (an older memjax's layout) into a
    generation that `.current` names; returns it (None when there are none)."""
    plain = [name for name in names
             if (self.out_dir / name).is_file() and not (self.out_dir / name).is_symlink()]
    if not plain:
      return None
    adopted = self.out_dir / f"{_GENERATION_PREFIX}adopted-{os.getpid()}-{time.monotonic_ns()}"
    adopted.mkdir()
    for name in plain:
      try:
        os.link(self.out_dir / name, adopted / name)
      except OSError:  # a file system without hard links
        shutil.copy2(self.out_dir / name, adopted / name)
    _atomic_symlink(adopted.name, self.out_dir / _CURRENT)
    _commit_step("adopted")
    for name in plain:
      _atomic_symlink(f"{_CURRENT}/{name}", self.out_dir / name)
      _commit_step(f"adopted {name}")
    return adopted


def current_generation(out_dir: str | pathlib.Path) -> pathlib.Path | None:
  """The generation folder that `out_dir`'s results are read from (None: plain files or none).

  A reader that opens several result files resolves this once and reads them all from it, so
  that a run committing meanwhile cannot hand it files of two runs."""
  link = pathlib.Path(out_dir) / _CURRENT
  if not link.is_symlink():
    return None
  return link.parent / os.readlink(link)


def results_folder(out_dir: str | pathlib.Path) -> pathlib.Path:
  """The folder to read `out_dir`'s current results from: its current generation, or `out_dir`
  itself when it holds plain files."""
  current = current_generation(out_dir)
  return current if current is not None and current.is_dir() else pathlib.Path(out_dir)


def _is_our_link(path: pathlib.Path) -> bool:
  return path.is_symlink() and os.readlink(path) == f"{_CURRENT}/{path.name}"


def _atomic_symlink(target: str, link: pathlib.Path) -> None:
  """Makes `link` point at `target`, replacing what was there in one rename."""
  temporary = link.with_name(f"{_CURRENT}.{os.getpid()}-{time.monotonic_ns()}")
  os.symlink(target, temporary)
  os.replace(temporary, link)


def _fsync_dir(path: pathlib.Path) -> None:
  try:
    descriptor = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(descriptor)
  except OSError:
    pass
  finally:
    os.close(descriptor)


def _commit_step(step: str) -> None:
  """A hook for the fault tests: `MEMJAX_TEST_KILL_AT=<step>` kills the process with SIGKILL
  right after that step of a commit (e.g. "staged", "linked matches.csv", "swapped");
  `MEMJAX_TEST_KILL_AT=SIGINT:<step>` sends it SIGINT (Ctrl-C) there instead."""
  wanted = os.environ.get("MEMJAX_TEST_KILL_AT")
  if not wanted:
    return
  name, _, at = wanted.rpartition(":") if wanted.startswith("SIG") else ("SIGKILL", "", wanted)
  if at == step:
    os.kill(os.getpid(), getattr(signal, name))


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
