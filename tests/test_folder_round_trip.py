"""Your own images, end to end: a folder of gray PNGs -> train (2 steps) -> sample -> the audit
command that the sample workflow prints, each run as the command a user types, the next command
taken from the summary that the one before printed on stdout."""

import os
import pathlib
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from memjax.data import sources

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# A tiny U-Net on 16x16 images, on top of configs/demo_ddpm.py.
TINY = ["--config.data.downsample=1", "--config.model.model_channels=16",
        "--config.model.channel_mult=(1,)", "--config.model.num_res_blocks=1",
        "--config.model.attention_resolutions=()", "--config.model.num_head_channels=-1",
        "--config.num_train_steps=2", "--config.batch_size=4", "--config.num_samples=4",
        "--config.sample_batch_size=4", "--config.sample.num_steps=2",
        "--config.sample_every_steps=0", "--config.progress=false",
        "--config.async_checkpoints=false", "--config.data.num_threads=1"]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
      os.pathsep)
  env.pop("MEMJAX_TRACEBACK", None)
  return env


def _run(argv, cwd):
  """Runs a printed `memjax ...` command line (the console script is `python -m memjax`)."""
  assert argv[0] == "memjax", argv
  process = subprocess.run([sys.executable, "-m", "memjax", *argv[1:]], cwd=cwd, env=_env(),
                           capture_output=True, text=True, timeout=300, check=False)
  assert process.returncode == 0, f"{argv}\nstdout:\n{process.stdout}\nstderr:\n{process.stderr}"
  return process.stdout


def _next_command(stdout, prefix):
  lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
  assert len(lines) == 1, stdout
  return shlex.split(lines[0][len(prefix):])


def test_folder_train_sample_and_the_printed_audit(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "my images"  # a space: the printed commands quote their paths
  folder.mkdir()
  for i in range(8):
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")

  trained = _run(["memjax", "--config=demo_ddpm", f"--config.data.source={folder.name}", *TINY,
                  "--workdir=run"], cwd=tmp_path)
  assert "trained to step 2 in run" in trained
  sample = _next_command(trained, "next, sample it: ")
  assert "--config.workflow=sample" in sample and f"--config.data.source={folder.name}" in sample

  sampled = _run(sample, cwd=tmp_path)
  chunks = sorted((tmp_path / "run" / "samples").glob("*.npz"))
  with np.load(chunks[0]) as chunk:
    assert chunk["images"].shape[1:] == (16, 16, 1)  # the folder's images are (16, 16)
  audit = _next_command(sampled, "next, audit them: ")
  assert audit[:2] == ["memjax", "--config=audit"], audit

  audited = _run(audit, cwd=tmp_path)
  assert "of 4 synthetic images memorized by pixel correlation" in audited, audited
  assert (tmp_path / "run" / "audit" / "summary.json").is_file()
  assert (tmp_path / "run" / "audit" / "report.html").is_file()


def test_one_channel_is_one_layout(rng):
  gray = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
  with_axis = sources.ArraySource(gray[..., None])
  without = sources.ArraySource(gray)
  a, b, none = sources.one_layout(with_axis, without, None)
  assert none is None and a.shape == b.shape == (8, 8)
  np.testing.assert_array_equal(a.read(0, 5, dtype=None), gray)
  out = np.empty((2, 8, 8), np.float32)
  a.read_into(1, 3, out)
  np.testing.assert_array_equal(out, gray[1:3])
  # Another difference stays one for check_same_shape to name.
  rgb = sources.ArraySource(np.zeros((5, 8, 8, 3), np.uint8))
  c, d = sources.one_layout(rgb, without)
  assert c is rgb and d is without
  with pytest.raises(ValueError, match="one shape"):
    sources.check_same_shape(c, d)
