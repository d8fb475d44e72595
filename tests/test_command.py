"""The memjax command's own contract: configs by name or path, --help (exit 0, every key with its
meaning from the config files' comments), the tools' --help, and the next commands that the
workflows print."""

import os
import pathlib
import subprocess
import sys

import pytest

from memjax import cli
from memjax import workflows

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*command, cwd=REPO_ROOT):
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  env.pop("MEMJAX_TRACEBACK", None)
  return subprocess.run([sys.executable, *command], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=120, check=False)


def test_configs_by_name_and_by_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here
  shipped = cli.configs_dir()
  assert (shipped / "audit.py").is_file()
  assert cli.resolve_config("audit") == str(shipped / "audit.py")
  assert cli.resolve_config("cxr_ddpm.py") == str(shipped / "cxr_ddpm.py")
  assert cli.resolve_config("configs/demo.py:x") == str(shipped / "demo.py") + ":x"
  own = tmp_path / "mine.py"
  own.write_text("from configs import default\n\ndef get_config():\n  return default.get_config()\n")
  assert cli.resolve_config(str(own)) == str(own)
  with pytest.raises(FileNotFoundError, match="no such config file or shipped config.*cxr_ddpm"):
    cli.resolve_config("cxr_dpm")
  with pytest.raises(FileNotFoundError):
    cli.resolve_config(str(tmp_path / "missing.py"))
  assert {"audit", "default", "demo", "prepare", "cxr_ddpm"} <= set(cli.shipped_configs())


def test_key_meanings_come_from_the_config_comments():
  meanings = cli.key_meanings(cli.configs_dir() / "audit.py")  # and default.py, which it imports
  assert meanings["audit.k"] == "training matches kept per synthetic image"
  assert meanings["audit.threshold"] == "used when no holdout set is given"
  # A comment block above a run of assignments; a trailing comment ends its run.
  assert meanings["audit.synthetic_images"] == "the images to audit"
  assert meanings["audit.precision"].startswith('Products: "float32"')
  assert "audit.progress" not in meanings or "Products" not in meanings["audit.progress"]
  # The experiment's own comment wins over default.py's.
  cxr = cli.key_meanings(cli.configs_dir() / "cxr_ddpm.py")
  assert set(meanings) <= set(cxr)


@pytest.mark.parametrize("command", [
    ("launch.py", "--config=configs/demo_ddpm.py", "--help"),
    ("-m", "memjax", "--config=audit", "-h"),
])
def test_help_exits_0_with_every_key_and_its_meaning(command, tmp_path):
  done = _run(*command, cwd=REPO_ROOT if command[0] == "launch.py" else tmp_path)
  assert done.returncode == 0, done.stderr
  assert "--config.audit.k=5" in done.stdout
  assert "training matches kept per synthetic image" in done.stdout
  assert "--config.num_train_steps=" in done.stdout and "--workdir" in done.stdout
  assert "demo_ddpm " in done.stdout and "prepare " in done.stdout  # the shipped configs


@pytest.mark.parametrize("tool", ["prepare_data.py", "validate_detectors.py"])
def test_tools_help_exits_0(tool):
  done = _run(str(REPO_ROOT / "tools" / tool), "--help")
  assert done.returncode == 0, done.stderr
  assert "--workdir" in done.stdout or "--dataset" in done.stdout


def test_workdir_is_required_but_for_prepare(tmp_path):
  done = _run("-m", "memjax", "--config=audit", cwd=tmp_path)
  assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
  assert "--workdir is required for the audit workflow" in done.stderr


@pytest.mark.parametrize("program, shown", [("/venv/bin/memjax", "memjax"),
                                           ("/x/memjax/__main__.py", "memjax"),
                                           ("launch.py", "python launch.py")])
def test_the_next_command_repeats_the_config_arguments(program, shown, tmp_path, monkeypatch):
  monkeypatch.setattr(workflows, "_COMMAND", dict(workflows._COMMAND))
  workflows.remember_command([program, "--config=demo_ddpm", "--config.data.source=my images",
                              "--config.workflow=train", f"--workdir={tmp_path}", "--verbosity=0"])
  assert workflows._same_run(tmp_path, "sample") == (
      f"{shown} --config=demo_ddpm '--config.data.source=my images' --config.workflow=sample "
      f"--workdir={tmp_path}")


def test_absl_info_lines_with_verbosity(tmp_path, rng):
  """absl's INFO lines come back when --verbosity asks (without it, none: test_install.py and
  test_readme.py check the stderr of the audits they run)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.save(tmp_path / "train.npy", rng.integers(0, 256, (6, 8, 8), dtype=np.uint8))
  np.save(tmp_path / "synthetic.npy", rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
  told = _run("-m", "memjax", "--config=audit", "--config.audit.synthetic_images=synthetic.npy",
              "--config.audit.training_images=train.npy", "--config.audit.progress=false",
              "--workdir=told", "--verbosity=0", cwd=tmp_path)
  assert told.returncode == 0, told.stderr
  assert told.stdout.splitlines()[0].startswith("decision: no evidence of copying beyond chance: "
                                                "pixel correlation: 0 of 3 flagged")
  assert told.stdout.splitlines()[1].startswith("0 of 3 synthetic images memorized by pixel "
                                                "correlation")
  assert "audit written to told" in told.stderr  # absl's INFO line, asked for
