"""A run's checkpoints in workdir/checkpoints: orbax's manager, what a step holds, and reads
that check a step before trusting it.

A step holds three items: `state` (the trainer's arrays: weights, optimizer state, EMA, step),
`data` (the input pipeline's position, JSON) and `meta` (what sampling needs to know about the
data, JSON). Orbax writes a step into a temporary folder and renames it when complete, so a run
killed mid-save leaves nothing that is read back. A complete step can still be damaged later (a
truncated file, an empty `_METADATA`), so every read starts at the newest step and falls back
to the newest intact one, with a warning that names the damaged step and file; it fails with
one line only when no step is intact. A config that does not fit the run (another model size,
batch size or data set) is told apart from damage, and refused before anything is written, in
one line that names the keys that changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import errno
import json
import logging as std_logging
import os
import pathlib
import re
import shutil
import sys
import time
from typing import TYPE_CHECKING, Any

from absl import logging
from flax import nnx
import jax
import numpy as np

from memjax import outputs
from memjax import parallel
from memjax.train import run_config
from memjax.train import state as state_lib

if TYPE_CHECKING:  # Configs are only read here; a bare machine may lack ml_collections.
  import ml_collections

CHECKPOINTS = "checkpoints"
DAMAGED_SUFFIX = ".damaged"  # A damaged step that a resumed run set aside: checkpoints/8.damaged
# The files of a step that hold JSON: orbax's step and tree metadata, shardings, array metadata
# and the JSON items.
_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")
# What `meta` records that a resume must keep.
_RESUME_META_KEYS = ("trainer", "image_shape", "data", "downsample")


class CheckpointError(ValueError):
  """A work dir's checkpoints cannot serve this run: none is intact, or another config made them."""


# ----------------------------------------------------------------------------------------------
# The manager, and what a step holds.


class _BelowWarningFrom(std_logging.Filter):
  """Drops absl records under WARNING that come from one package's files (orbax's progress)."""

  def __init__(self, package: str):
    super().__init__()
    self._part = f"{os.sep}{package}{os.sep}"

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or self._part not in record.pathname


class _DiskFullFrom(std_logging.Filter):
  """Drops a package's error records about a full disk: each of orbax's threads logs its own
  traceback of the one failed write, where `disk_full_error` says it once, in one line."""

  def __init__(self, package: str):
    super().__init__()
    self._part = f"{os.sep}{package}{os.sep}" if package else ""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if self._part not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not ((error is not None and is_disk_full(error))
                or _DISK_FULL_TEXT.search(record.getMessage()))


def _quiet_orbax() -> None:
  """Orbax logs every stage of every save at INFO; keep its warnings and errors only, and none
  about a full disk (the run ends with one line saying so)."""
  absl_logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _BelowWarningFrom) for f in absl_logger.filters):
    absl_logger.addFilter(_BelowWarningFrom("orbax"))
  if not any(isinstance(f, _DiskFullFrom) for f in absl_logger.filters):
    absl_logger.addFilter(_DiskFullFrom("orbax"))
  _silence_failed_writes()


# How tensorstore (under orbax) says that a write found the disk full.
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|"
                             r"os_error_code='(27|28|122)'")
# The same for a write past the process's file size limit (ulimit -f, RLIMIT_FSIZE).
_FILE_LIMIT_TEXT = re.compile(r"File too large|os_error_code='27'")
TEMPORARY_STEP = "*.orbax-checkpoint-tmp*"  # orbax's folder of a step being written


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk (or quota, or the file
  size limit)."""
  for _ in range(16):
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      return True
    if _DISK_FULL_TEXT.search(str(error)):
      return True
    error = error.__cause__ or error.__context__
    if error is None:
      return False
  return False


def disk_full_error(workdir: pathlib.Path, state: Any, error: BaseException) -> OSError:
  """The one-line error of a run that found the disk full, after removing orbax's temporary
  folder of the checkpoint it was writing (nothing of it is kept; the earlier steps are intact)."""
  folder = pathlib.Path(workdir) / CHECKPOINTS
  temporary = sorted(folder.glob(TEMPORARY_STEP))
  if jax.process_index() == 0:
    _remove_temporary_steps(folder)
  steps = sorted({path.name.split(".", 1)[0] for path in temporary})
  free = outputs.free_bytes(folder if folder.exists() else pathlib.Path(workdir))
  have = f"; {outputs.size_text(free)} free there" if free is not None else ""
  if not steps:  # another file of the run (config.json, events, a grid)
    name = getattr(error, "filename", None) or workdir
    return OSError(f"no space left on the device to write {name}{have}. Free some space and run "
                   "the same command again: it resumes from the last complete checkpoint")
  complete = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
  if complete:  # what the last complete step took
    newest = max(complete, key=lambda p: int(p.name))
    need = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
    size = f"about {outputs.size_text(need)} (as step {newest.name} took)"
  else:
    need = sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree.leaves(state))
    size = f"more than {outputs.size_text(need)} (the training state, and orbax's metadata)"
  if _hit_file_size_limit(error):
    return OSError(f"the file size limit (ulimit -f) stopped the write of checkpoint step "
                   f"{', '.join(steps)} in {folder}: it needs {size}. Raise the limit and run "
                   "the same command again: it resumes from the last complete checkpoint, which "
                   "is intact")
  return OSError(f"no space left on the device to write checkpoint step {', '.join(steps)} in "
                 f"{folder}: it needs {size}{have}. Free some space (or lower keep_checkpoints) "
                 "and run the same command again: it resumes from the last complete checkpoint, "
                 "which is intact")


def _hit_file_size_limit(error: BaseException | None) -> bool:
  for _ in range(16):
    if error is None:
      return False
    if (isinstance(error, OSError) and error.errno == errno.EFBIG) or _FILE_LIMIT_TEXT.search(
        str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _remove_temporary_steps(folder: pathlib.Path, settle_seconds: float = 0.3,
                            timeout_seconds: float = 10.0) -> None:
  """Removes orbax's temporary step folders, until none has come back for `settle_seconds`:
  tensorstore's writes of the failed save may still be ending (and creating folders) after
  orbax reported the failure."""
  deadline = time.monotonic() + timeout_seconds
  quiet_since = None
  while time.monotonic() < deadline:
    found = list(folder.glob(TEMPORARY_STEP))
    for path in found:
      shutil.rmtree(path, ignore_errors=True)
    now = time.monotonic()
    if found:
      quiet_since = None
    elif quiet_since is None:
      quiet_since = now
    elif now - quiet_since >= settle_seconds:
      return
    time.sleep(0.05)


def _silence_failed_writes() -> None:
  """When a save fails (a full disk), the writes still in flight fail one by one: asyncio logs
  each dropped future's disk-full error, and tensorstore's callbacks print an 'Event loop is
  closed' traceback each once orbax has closed its loop. The run's one-line error says what
  they say, so they are dropped (every other error still shows)."""
  asyncio_logger = std_logging.getLogger("asyncio")
  if not any(isinstance(f, _DiskFullFrom) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_DiskFullFrom(""))

  def closed_loop(error: BaseException | None) -> bool:
    return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
            and error.__traceback__ is not None
            and _last_frame_file(error.__traceback__).endswith(
                os.path.join("asyncio", "base_events.py")))

  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
  if getattr(excepthook, "memjax_quiet", False):
    return

  def quiet_excepthook(kind, error, trace):
    if not closed_loop(error):
      excepthook(kind, error, trace)

  def quiet_unraisablehook(report):
    if not closed_loop(report.exc_value):
      unraisablehook(report)

  quiet_excepthook.memjax_quiet = True
  sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


def _last_frame_file(trace) -> str:
  while trace.tb_next is not None:
    trace = trace.tb_next
  return trace.tb_frame.f_code.co_filename


def checkpoint_manager(workdir: pathlib.Path, keep: int = 3, asynchronous: bool = True,
                       read_only: bool = False):
  """The orbax manager of `workdir/checkpoints`: the last `keep` steps, saved atomically.

  Orbax writes a step into a temporary folder and renames it when complete, so a run killed
  mid-save leaves a temporary folder that is never read back (and is removed on the next start).
  A reader neither creates nor cleans: it lists complete steps, reads their metadata and
  restores them.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  _quiet_orbax()
  directory = (pathlib.Path(workdir) / CHECKPOINTS).absolute()
  if read_only and not directory.is_dir():
    raise FileNotFoundError(f"{directory} does not exist; train first (the same command with "
                            "--config.workflow=train)")
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(max(1, int(keep))),
      enable_async_checkpointing=asynchronous, cleanup_tmp_directories=not read_only,
      create=not read_only)
  handlers = None
  if read_only:  # Registered, so that a step's metadata (shapes) is read without restoring it.
    handlers = dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                    meta=ocp.JsonCheckpointHandler())
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager, step: int, state: nnx.State, data_state: Mapping[str, Any],
         meta: Mapping[str, Any]) -> None:
  """Saves step `step`: the state, the input pipeline's position and `meta`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state)),
      meta=ocp.args.JsonSave(dict(meta, step=step))), force=True)


def make_meta(trainer: state_lib.Trainer, data: Any, image_shape: Sequence[int],
              config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What sampling needs without the training data (`inputs.TrainingData`): the model's input
  and the data's range."""
  return {"trainer": trainer.name, "image_shape": list(image_shape),
          "data_shape": list(data.image_shape),
          "image_dtype": np.dtype(data.image_dtype).name, "data": data.description,
          "downsample": int(config.data.get("downsample", 1)), "seed": int(config.seed)}


def _read_json_items(manager, step: int, *names: str) -> dict[str, dict[str, Any]]:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restored = manager.restore(step, args=ocp.args.Composite(
      **{name: ocp.args.JsonRestore() for name in names}))
  return {name: dict(restored[name]) for name in names}


# ----------------------------------------------------------------------------------------------
# Damage: the newest intact step.


def _damaged_file(workdir: pathlib.Path, step: int) -> str | None:
  """The first JSON file of a step that is empty or does not parse, e.g. '.../_METADATA is empty'.

  Orbax's own error for these names no file ("Expecting value: line 1 column 1").
  """
  folder = pathlib.Path(workdir) / CHECKPOINTS / str(step)
  for path in sorted(folder.rglob("*")):
    if not path.is_file() or not (path.name in _JSON_FILES or
                                  path.parent.name == "array_metadatas"):
      continue
    name = path.relative_to(workdir)
    text = path.read_bytes()
    if not text.strip():
      return f"{name} is empty"
    try:
      json.loads(text)
    except ValueError as e:
      return f"{name} is not valid JSON ({e})"
  return None


def _first_line(error: BaseException) -> str:
  """The innermost cause of `error`, in one line: the file or array it names, not the spec of
  tensorstore's driver that its outer message prints."""
  for _ in range(16):
    inner = error.__cause__ or error.__context__
    if inner is None:
      break
    error = inner
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _newest_intact(workdir: pathlib.Path, steps: Sequence[int], load: Callable[[int], Any]
                   ) -> tuple[int, Any, list[int]]:
  """(step, load(step), the damaged newer steps) for the newest of `steps` that loads.

  A step is damaged when a JSON file of it is empty or unparsable, or `load` fails with
  anything but a `CheckpointError` (which says the config does not fit, and is raised). A
  warning names each damaged step and its file; a `CheckpointError` in one line when none loads.
  """
  folder = pathlib.Path(workdir) / CHECKPOINTS
  damaged: list[tuple[int, str]] = []
  for step in sorted(steps, reverse=True):
    problem = _damaged_file(workdir, step)
    if problem is None:
      try:
        loaded = load(step)
      except (CheckpointError, MemoryError):
        raise
      except Exception as e:  # pylint: disable=broad-except  (orbax, tensorstore, json raise many)
        problem = _first_line(e)
      else:
        for bad, why in damaged:
          logging.warning("checkpoint step %d in %s is damaged (%s); using step %d, the newest "
                          "intact one", bad, folder, why, step)
        return step, loaded, [bad for bad, _ in damaged]
    damaged.append((step, problem.replace("\n", " ")))
  raise CheckpointError(
      f"{workdir} holds no intact checkpoint in {CHECKPOINTS}/: "
      + "; ".join(f"step {step}: {why}" for step, why in damaged)
      + "; restore the damaged files, or train afresh with a new --workdir")


def set_aside(workdir: pathlib.Path, steps: Sequence[int]) -> None:
  """Renames damaged steps to checkpoints/STEP.damaged, out of orbax's sight, so that the resumed
  run can save those steps again; the damaged files stay for a person to look at."""
  folder = pathlib.Path(workdir) / CHECKPOINTS
  if jax.process_index() == 0:
    for step in steps:
      target = folder / f"{step}{DAMAGED_SUFFIX}"
      count = 1
      while target.exists():
        count += 1
        target = folder / f"{step}{DAMAGED_SUFFIX}{count}"
      os.replace(folder / str(step), target)
      logging.warning("set the damaged checkpoint step %d aside as %s", step, target)
  if steps and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("memjax: damaged checkpoints set aside")


# ----------------------------------------------------------------------------------------------
# Whether a config fits a run.


def _leaf_name(path: Sequence[Any]) -> str:
  parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  if parts and parts[-1] == "value":  # nnx.Variable's own field
    parts = parts[:-1]
  return ".".join(parts)


def _state_misfit(manager, step: int, compiled: state_lib.CompiledTrainer) -> str | None:
  """How the state `compiled` makes differs from the step's (names and shapes), from metadata."""
  saved = manager.item_metadata(step)["state"]
  if saved is None:
    raise ValueError(f"step {step} has no readable state metadata")
  have = {_leaf_name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
  want = {_leaf_name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(compiled.abstract_state())[0]}
  for name in sorted(set(have) | set(want)):
    if name not in want:
      return f"state {name} of shape {have[name]} (this config has none)"
    if name not in have:
      return f"no state {name} (this config makes one of shape {want[name]})"
    if have[name] != want[name]:
      return f"state {name} of shape {have[name]} (this config: {want[name]})"
  return None


def _misfits(saved_meta: Mapping[str, Any], saved_spec: Mapping[str, Any],
             current_meta: Mapping[str, Any], current_spec: Mapping[str, Any]) -> list[str]:
  """The recorded values that the current run would change, as 'key saved (this config: now)'."""
  problems = []
  for saved, current in ((saved_meta, current_meta), (saved_spec, current_spec)):
    for key, now in current.items():
      if saved.get(key) != now:
        problems.append(f"{key} {saved.get(key)!r} (this config: {now!r})")
  return problems


def _misfit_error(workdir: pathlib.Path, step: int, problems: Sequence[str],
                  config: ml_collections.ConfigDict) -> CheckpointError:
  """One line: the keys that differ from the run's config.json, and what the checkpoint holds."""
  saved = run_config.read_saved_config(workdir)
  keys = [] if saved is None else run_config.config_differences(saved, config)
  changed = f", which changes {', '.join(keys)}" if keys else ""
  return CheckpointError(
      f"cannot resume {workdir} with this config{changed}: its checkpoint of step {step} has "
      f"{'; '.join(problems)}; resume with the config it was trained with "
      f"({workdir / run_config.CONFIG_FILE}) or use a new --workdir")


def _check_fits(manager, step: int, workdir: pathlib.Path, config: ml_collections.ConfigDict,
                compiled: state_lib.CompiledTrainer, current_meta: Mapping[str, Any],
                current_spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """The step's JSON items, once its meta, input pipeline and state shapes fit the run's.

  Raises:
    CheckpointError: when they do not, naming what differs.
  """
  items = _read_json_items(manager, step, "meta", "data")
  spec = dict(items["data"].get("spec", {}))
  problems = _misfits(items["meta"], spec, current_meta, current_spec)
  if not problems:
    misfit = _state_misfit(manager, step, compiled)
    problems = [misfit] if misfit else []
  if problems:
    raise _misfit_error(workdir, step, problems, config)
  return items


# ----------------------------------------------------------------------------------------------
# Reads: a resume, a restore, a check.


@dataclasses.dataclass
class Resumed:
  """The newest intact checkpoint of a run, restored: its step, state and input position."""
  step: int
  state: nnx.State
  data_state: dict[str, Any]
  damaged: list[int]  # newer steps that were damaged, to set aside


def resume(workdir: pathlib.Path, config: ml_collections.ConfigDict,
           compiled: state_lib.CompiledTrainer, meta: Mapping[str, Any],
           spec: Mapping[str, Any]) -> Resumed | None:
  """The newest intact checkpoint in `workdir` that this run (`compiled`, `meta`, the input
  pipeline's `spec`) continues, restored; None when there is none. It only reads.

  Raises:
    CheckpointError: when the run there does not fit this config, or no step is intact.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not (workdir / CHECKPOINTS).is_dir():
    return None
  current_meta = {key: meta[key] for key in _RESUME_META_KEYS}
  # The process layout does not change the global batches: a run resumes on more or fewer
  # processes.
  current_spec = {key: value for key, value in spec.items()
                  if key not in ("process_index", "process_count")}
  manager = checkpoint_manager(workdir, read_only=True)
  try:
    steps = manager.all_steps()
    if not steps:
      return None

    def load(step):
      items = _check_fits(manager, step, workdir, config, compiled, current_meta, current_spec)
      state = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(compiled.abstract_state())))["state"]
      return state, items["data"]

    step, (state, data_state), damaged = _newest_intact(workdir, steps, load)
  finally:
    manager.close()
  return Resumed(step, state, data_state, damaged)


def check_resumable(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                    trainer: state_lib.Trainer, *, mesh: jax.sharding.Mesh | None = None) -> None:
  """Checks, without the training data and without restoring arrays, that `config` can resume
  the run in `workdir` (if any): the same trainer, downsampling, batch size, seed and state
  shapes as its newest intact checkpoint.

  Raises:
    CheckpointError: naming the keys that differ, or the damage when no step is intact.
  """
  workdir = pathlib.Path(workdir)
  if not (workdir / CHECKPOINTS).is_dir():
    return
  mesh = mesh or parallel.data_mesh(config.get("num_devices") or None)
  current_meta = {"trainer": trainer.name, "downsample": int(config.data.get("downsample", 1))}
  current_spec = {"batch_size": int(config.batch_size), "seed": int(config.seed)}
  manager = checkpoint_manager(workdir, read_only=True)
  try:
    steps = manager.all_steps()

    def load(step):
      meta = _read_json_items(manager, step, "meta")["meta"]
      if meta.get("trainer") != trainer.name:  # Before building another family's state.
        raise _misfit_error(workdir, step, _misfits(meta, {}, current_meta, {}), config)
      compiled = state_lib.CompiledTrainer(trainer, mesh, meta["image_shape"], config.seed,
                                           meta.get("downsample", 1))
      _check_fits(manager, step, workdir, config, compiled, current_meta, current_spec)

    if steps:
      _newest_intact(workdir, steps, load)
  finally:
    manager.close()


def read_checkpoint_meta(workdir: pathlib.Path, step: int | None = None
                         ) -> tuple[int, dict[str, Any]]:
  """(step, meta) of the newest intact (or the given) complete checkpoint in `workdir`.

  Raises:
    FileNotFoundError: when `workdir` holds no complete checkpoint (of `step`).
    CheckpointError: when none (or `step`) is intact.
  """
  workdir = pathlib.Path(workdir)
  manager = checkpoint_manager(workdir, read_only=True)
  try:
    steps = _steps_to_read(manager, workdir, step)
    step, meta, _ = _newest_intact(
        workdir, steps, lambda s: _read_json_items(manager, s, "meta")["meta"])
  finally:
    manager.close()
  return step, meta


def _steps_to_read(manager, workdir: pathlib.Path, step: int | None) -> list[int]:
  steps = list(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"{workdir / CHECKPOINTS} holds no complete checkpoint; train "
                            "first (the same command with --config.workflow=train)")
  if step is None:
    return steps
  if step not in steps:
    raise FileNotFoundError(f"{workdir / CHECKPOINTS} holds no complete checkpoint of step "
                            f"{step}; it holds steps {sorted(steps)}")
  return [step]


def restore(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            trainer: state_lib.Trainer, *, mesh: jax.sharding.Mesh | None = None,
            step: int | None = None
            ) -> tuple[state_lib.CompiledTrainer, nnx.State, nnx.State, int, dict[str, Any]]:
  """The trained state of `workdir` (newest intact step, or `step`) without the training data.

  Returns (compiled, state, rngs, step, meta).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  state_lib.use_compilation_cache(workdir)
  mesh = mesh or parallel.data_mesh(config.get("num_devices") or None)
  manager = checkpoint_manager(workdir, read_only=True)
  try:

    def load(step):
      meta = _read_json_items(manager, step, "meta")["meta"]
      if meta.get("trainer") != trainer.name:
        raise CheckpointError(f"{workdir / CHECKPOINTS} holds a {meta.get('trainer')} run, not "
                              f"{trainer.name}; use its own config")
      compiled = state_lib.CompiledTrainer(trainer, mesh, meta["image_shape"], config.seed,
                                           meta.get("downsample", 1))
      misfit = _state_misfit(manager, step, compiled)
      if misfit:
        raise _misfit_error(workdir, step, [misfit], config)
      state = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(compiled.abstract_state())))["state"]
      return compiled, state, meta

    step, (compiled, state, meta), _ = _newest_intact(
        workdir, _steps_to_read(manager, workdir, step), load)
  finally:
    manager.close()
  rngs, _ = compiled.init()
  return compiled, state, rngs, step, meta


def save_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
  """Writes `config` as workdir/config.json, unless it cannot resume the checkpoints there.

  Every process of a run calls it (the check reads the checkpoints through orbax, whose managers
  synchronize all processes); process 0 writes.

  When `config.model.name` is a model family and `workdir` holds its checkpoints, the config
  must fit them (`check_resumable`): a resume that is bound to fail must not replace the
  config.json that `load_embedder` and later resumes read.

  Raises:
    CheckpointError: naming the keys that differ; config.json is left as it is.
  """
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top  (the families)
  workdir = pathlib.Path(workdir)
  name = config.get("model", {}).get("name")
  if name in train_lib.FAMILIES and (workdir / CHECKPOINTS).is_dir():
    # On every process of a multi-process run: an orbax CheckpointManager's constructor is a
    # barrier over all processes.
    check_resumable(config, workdir, train_lib.make_trainer(config))
  if jax.process_index() != 0:  # one process writes
    return workdir / run_config.CONFIG_FILE
  return run_config.write_config(config, workdir)
