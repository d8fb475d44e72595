"""Training faults, each reproduced for real on a tiny run (issue 15, items 5 and 6).

* A resume with a config that does not fit the checkpoints (a contrastive encoder with another
  `model.embedding_dim`, another batch size) fails in one line that names the keys that changed,
  and leaves config.json, the checkpoints and the events as they were: the encoder still loads.
* A damaged newest checkpoint (an array file cut in half, an empty `_METADATA`) is not trusted:
  restore and resume fall back to the newest intact step, with a warning naming the damaged step
  and file, and the resumed run ends with the very weights of an undamaged one. Only when no
  step is intact does the run fail, in one line that names the work dir and each damage.

The damage is done to real orbax checkpoints written by the tiny denoiser of
tests/test_train_loop.py, and the changed config is resumed through `workflows.run`, the path
that launch.py takes.
"""

import json
import logging
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from memjax import workflows
from memjax.train import checkpoints
from memjax.train import contrastive
from memjax.train import loop
from memjax.train import sampling
import test_contrastive as tiny_encoder  # A contrastive encoder that trains in seconds.
import test_train_loop as tiny  # The tiny denoiser family and its 24 images.

# A restore that fails on a damaged file leaves tensorstore reads whose callbacks reach orbax's
# event loop after it closed ("Event loop is closed", printed as unraisable); harmless here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def denoiser_run(tmp_path_factory) -> pathlib.Path:
  """A denoiser trained 8 steps, with intact checkpoints of steps 4 and 8; copy, never change."""
  workdir = tmp_path_factory.mktemp("denoiser") / "run"
  config = tiny.make_config(num_train_steps=8, checkpoint_every_steps=4)
  loop.train(config, workdir, tiny.make_trainer(config), data=tiny.training_data())
  assert sorted(int(p.name) for p in (workdir / checkpoints.CHECKPOINTS).iterdir()) == [4, 8]
  return workdir


def copy_of(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(run, tmp_path / "run"))


def largest_array_file(workdir: pathlib.Path, step: int) -> pathlib.Path:
  """The biggest data file of a step's state database (state/d/, where orbax merges what each
  process wrote): a restore reads its arrays from it."""
  state = workdir / checkpoints.CHECKPOINTS / str(step) / "state"
  return max(state.glob("d/*"), key=lambda p: p.stat().st_size)


def cut_in_half(path: pathlib.Path) -> None:
  size = path.stat().st_size
  assert size > 1000, f"{path} is too small to be a weight file ({size} bytes)"
  os.truncate(path, size // 2)


def snapshot(workdir: pathlib.Path) -> dict[str, bytes]:
  """The bytes of everything a run writes: config.json, checkpoints/, events/, grids/."""
  files = [workdir / "config.json"]
  for folder in (checkpoints.CHECKPOINTS, loop.EVENTS, sampling.GRIDS):
    files += sorted(p for p in (workdir / folder).rglob("*") if p.is_file())
  return {str(p.relative_to(workdir)): p.read_bytes() for p in files if p.exists()}


def restored_params(config, workdir, **kwargs):
  compiled, state, rngs, step, _ = checkpoints.restore(config, workdir, tiny.make_trainer(config),
                                                **kwargs)
  return step, tiny.params(compiled.module(state, rngs))


def warnings_of(caplog) -> str:
  return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_truncated_array_file_falls_back_to_the_previous_step(denoiser_run, tmp_path, caplog):
  config = tiny.make_config(num_train_steps=8)
  step, intact = restored_params(config, denoiser_run, step=4)
  assert step == 4 and restored_params(config, denoiser_run)[0] == 8  # undamaged: the newest
  workdir = copy_of(denoiser_run, tmp_path)
  cut_in_half(largest_array_file(workdir, 8))
  with caplog.at_level(logging.WARNING):
    step, params = restored_params(config, workdir)
  assert step == 4
  for got, want in zip(params, intact, strict=True):
    np.testing.assert_array_equal(got, want)
  warning = warnings_of(caplog)
  assert "checkpoint step 8" in warning and "damaged" in warning, warning
  assert str(workdir / checkpoints.CHECKPOINTS / "8" / "state") in warning, warning  # the bad item
  assert "using step 4" in warning
  # Asked for by number, the damaged step is refused in one line, not restored.
  with pytest.raises(checkpoints.CheckpointError, match="step 8: ") as error:
    restored_params(config, workdir, step=8)
  assert "\n" not in str(error.value)


def test_empty_metadata_resumes_from_the_intact_step_to_the_same_weights(denoiser_run, tmp_path,
                                                                          caplog):
  config = tiny.make_config(num_train_steps=12, checkpoint_every_steps=4)
  undamaged = loop.train(config, copy_of(denoiser_run, tmp_path / "a"), tiny.make_trainer(config),
                         data=tiny.training_data())
  workdir = copy_of(denoiser_run, tmp_path / "b")
  (workdir / checkpoints.CHECKPOINTS / "8" / "state" / "_METADATA").write_bytes(b"")
  with caplog.at_level(logging.WARNING):
    resumed = loop.train(config, workdir, tiny.make_trainer(config), data=tiny.training_data())
  warning = warnings_of(caplog)
  assert "checkpoint step 8" in warning and "using step 4" in warning, warning
  assert "checkpoints/8/state/_METADATA is empty" in warning, warning
  assert resumed.step == 12
  # It trained steps 5-12 again from step 4, on the same batches and keys as the undamaged run.
  assert sorted(tiny.read_scalars(workdir / loop.EVENTS)[-1]["loss"]) == list(range(5, 13))
  for got, want in zip(tiny.params(resumed.state), tiny.params(undamaged.state), strict=True):
    np.testing.assert_array_equal(got, want)
  # The damaged step is set aside for a person to look at; steps 8 and 12 were saved anew.
  folder = workdir / checkpoints.CHECKPOINTS
  assert (folder / "8.damaged" / "state" / "_METADATA").read_bytes() == b""
  assert sorted(p.name for p in folder.iterdir()) == ["12", "4", "8", "8.damaged"]
  assert restored_params(config, workdir)[0] == 12


def test_no_intact_checkpoint_fails_in_one_line_and_writes_nothing(denoiser_run, tmp_path):
  workdir = copy_of(denoiser_run, tmp_path)
  (workdir / checkpoints.CHECKPOINTS / "8" / "state" / "_METADATA").write_bytes(b"")
  cut_in_half(largest_array_file(workdir, 4))
  before = snapshot(workdir)
  config = tiny.make_config(num_train_steps=12, checkpoint_every_steps=4)
  for attempt in (lambda: loop.train(config, workdir, tiny.make_trainer(config),
                                     data=tiny.training_data()),
                  lambda: restored_params(config, workdir)):
    with pytest.raises(ValueError) as error:  # What launch.py prints as one line.
      attempt()
    message = str(error.value)
    assert isinstance(error.value, checkpoints.CheckpointError)
    assert "\n" not in message and len(message) < 1500, message
    assert message.startswith(f"{workdir} holds no intact checkpoint"), message
    assert "step 8: checkpoints/8/state/_METADATA is empty" in message, message
    assert "step 4: " in message and "checkpoints/4/state" in message, message
  assert snapshot(workdir) == before


def test_changed_batch_size_is_refused_before_writing(denoiser_run, tmp_path):
  workdir = copy_of(denoiser_run, tmp_path)
  before = snapshot(workdir)
  config = tiny.make_config(num_train_steps=12, batch_size=4)
  with pytest.raises(checkpoints.CheckpointError) as error:
    loop.train(config, workdir, tiny.make_trainer(config), data=tiny.training_data())
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"cannot resume {workdir} with this config, which changes "
                            "batch_size 8 -> 4:"), message
  assert snapshot(workdir) == before


def test_encoder_resumed_with_another_embedding_dim_keeps_its_config(tmp_path, capsys):
  images = tmp_path / "eight.npy"
  np.save(images, tiny_encoder.eight_images())

  def encoder_config(**overrides):
    return tiny_encoder.make_config(**{"workflow": "train", "num_devices": 1,
                                       "num_train_steps": 2, "data.source": str(images),
                                       **overrides})

  workdir = tmp_path / "encoder"
  workflows.run(encoder_config(), workdir)  # As launch.py runs it.
  # An encoder is not sampled: its summary's next command is an audit that uses it.
  printed = capsys.readouterr().out
  assert "next, audit with it: " in printed and f"--config.audit.encoder={workdir}" in printed
  assert "--config.workflow=sample" not in printed
  before = snapshot(workdir)
  assert "config.json" in before and "checkpoints/2/state/_METADATA" in before

  changed = encoder_config(num_train_steps=4, **{"model.embedding_dim": 16})
  with pytest.raises(ValueError) as error:
    workflows.run(changed, workdir)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"cannot resume {workdir} with this config, which changes "
                            "model.embedding_dim 8 -> 16:"), message
  assert "(this config: (16,))" in message, message  # what the checkpoint holds instead
  assert snapshot(workdir) == before
  with pytest.raises(checkpoints.CheckpointError, match="model.embedding_dim 8 -> 16"):
    loop.train(changed, workdir, contrastive.make_trainer(changed))
  assert snapshot(workdir) == before
  embedder = contrastive.load_embedder(workdir)  # What the audit's --config.audit.encoder does.
  assert embedder.embedding_dim == 8 and embedder.step == 2

  # A config that can resume the run (more steps, another learning rate) is saved.
  checkpoints.save_config(encoder_config(num_train_steps=3, **{"optimizer.learning_rate": 1e-3}),
                          workdir)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["optimizer"]["learning_rate"] == 1e-3 and saved["num_train_steps"] == 3


# Issue 25, item 8: a full disk during a checkpoint.

_RESUME_TO_12 = (
    "import sys; sys.path[:0] = [{tests!r}, {root!r}]\n"
    "import test_train_loop as tiny\n"
    "from memjax import cli\n"
    "from memjax.train import loop\n"
    "config = tiny.make_config(num_train_steps=12, checkpoint_every_steps=4)\n"
    "cli.run_reporting_user_errors(lambda: loop.train(\n"
    "    config, sys.argv[1], tiny.make_trainer(config), data=tiny.training_data()))\n")


def _can_mount_tmpfs(mount: pathlib.Path) -> bool:
  mount.mkdir()
  return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                        capture_output=True, check=False).returncode == 0


def _limit_file_size():
  """In the child: writes past 8 KB fail with EFBIG (SIGXFSZ ignored) instead of killing it."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))


@pytest.mark.parametrize("fault", ["full tmpfs", "file size limit"])
def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary_step(
    denoiser_run, tmp_path, fault):
  """The run's steps 4 and 8 are there, and the resumed run's step 12 does not fit: on a real
  tmpfs filled but for 16 KB, or, where no tmpfs can be mounted, under an 8 KB RLIMIT_FSIZE
  (its array files are 10 KB). One line naming the step, the folder and the space needed, exit
  status 2, orbax's temporary folder of step 12 removed, steps 4 and 8 as they were."""
  mount = tmp_path / "small"
  mounted = _can_mount_tmpfs(mount)
  if fault == "full tmpfs" and not mounted:
    pytest.skip("cannot mount a small tmpfs here; the file size limit stands in for it")
  if fault == "file size limit" and mounted and not os.environ.get("MEMJAX_TEST_FILE_LIMIT"):
    subprocess.run(["umount", str(mount)], check=False)
    pytest.skip("a real full tmpfs is tested here")
  try:
    workdir = pathlib.Path(shutil.copytree(denoiser_run, (mount if mounted else tmp_path) / "run"))
    before = snapshot(workdir)
    if fault == "full tmpfs":
      free = shutil.disk_usage(mount).free
      with open(mount / "filler", "wb") as filler:
        filler.write(b"\0" * (free - 16 * 1024))
    tests = pathlib.Path(__file__).resolve().parent
    script = _RESUME_TO_12.format(tests=str(tests), root=str(tests.parent))
    env = {k: v for k, v in os.environ.items() if k != "MEMJAX_TRACEBACK"}
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = str(1 << 40)  # no cache writes
    process = subprocess.run(
        [sys.executable, "-c", script, str(workdir)], cwd=tests.parent, env=env,
        capture_output=True, text=True, timeout=300, check=False,
        preexec_fn=_limit_file_size if fault == "file size limit" else None)
    assert process.returncode == 2, process.stderr[-3000:]
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr[-5000:]  # no orbax traceback, no asyncio noise
    folder = workdir / checkpoints.CHECKPOINTS
    what = ("error: no space left on the device to write" if fault == "full tmpfs" else
            "error: the file size limit (ulimit -f) stopped the write of")
    assert lines[0].startswith(f"{what} checkpoint step 12 in {folder}: it needs about "), lines[0]
    assert "resumes from the last complete checkpoint" in lines[0]
    assert sorted(p.name for p in folder.iterdir()) == ["4", "8"]  # no 12.orbax-checkpoint-tmp
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if k.startswith(checkpoints.CHECKPOINTS)} == {
        k: v for k, v in before.items() if k.startswith(checkpoints.CHECKPOINTS)}
  finally:
    if mounted:
      subprocess.run(["umount", str(mount)], check=False)
