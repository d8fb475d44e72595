"""memjax as a wheel: built from this repository, installed into a fresh virtual environment, run
as the `memjax` command from another directory, with the configs it ships.

Offline and fast: the wheel is built without build isolation (with the setuptools that
`pip install -e '.[test]'` installed), and the fresh environment gets memjax alone from the
wheel (`--no-deps --no-index`) and reads its dependencies from this test environment through a
.pth file, so nothing is downloaded. The build runs on a copy of the files a wheel is built from,
so that the checkout gets no build/ or egg-info folder.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
from PIL import Image
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")
BUILD_FOLDERS = ("memjax", "configs")


def _run(command, cwd, env=None, timeout=300):
  process = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=timeout, check=False)
  assert process.returncode == 0, (f"{command} exited {process.returncode}\nstdout:\n"
                                   f"{process.stdout}\nstderr:\n{process.stderr}")
  return process


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A fresh venv holding memjax from the wheel; returns (its bin folder, an env to run it)."""
  root = tmp_path_factory.mktemp("install")
  source = root / "source"
  source.mkdir()
  for name in BUILD_FILES:
    if (REPO_ROOT / name).is_file():
      shutil.copy2(REPO_ROOT / name, source / name)
  for name in BUILD_FOLDERS:
    shutil.copytree(REPO_ROOT / name, source / name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--quiet", "-w", root / "dist", source], cwd=root)
  (wheel,) = (root / "dist").glob("memjax-*.whl")

  venv = root / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
  python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "--quiet", wheel], cwd=root)
  # The dependencies: this environment's packages, after the venv's own (memjax from the wheel).
  site_packages = pathlib.Path(_run(
      [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      cwd=root).stdout.strip())
  ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  (site_packages / "memjax_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")

  env = {key: value for key, value in os.environ.items()
         if key not in ("PYTHONPATH", "MEMJAX_TRACEBACK", "VIRTUAL_ENV")}
  env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
  elsewhere = root / "elsewhere"  # no memjax checkout here
  elsewhere.mkdir()
  return {"bin": python.parent, "python": python, "env": env, "cwd": elsewhere,
          "site_packages": site_packages}


def test_wheel_ships_the_command_and_configs(installed):
  found = _run([installed["python"], "-c",
                "import memjax, memjax.launcher; print(memjax.__file__)"],
               cwd=installed["cwd"], env=installed["env"]).stdout.strip()
  assert pathlib.Path(found).parent == installed["site_packages"] / "memjax"
  shipped = installed["site_packages"] / "memjax" / "configs"
  assert {"audit.py", "default.py", "demo.py", "cxr_ddpm.py", "prepare.py"} <= {
      p.name for p in shipped.glob("*.py")}
  assert (installed["site_packages"] / "memjax" / "memorization" / "report" / "templates").is_dir()
  assert not (installed["site_packages"] / "configs").exists()  # no top-level `configs` package


def test_installed_help_lists_the_config_keys(installed):
  process = _run([installed["bin"] / "memjax", "--config=cxr_ddpm", "--help"],
                 cwd=installed["cwd"], env=installed["env"])
  assert "--config.num_train_steps=" in process.stdout
  assert "--config.audit.k=5" in process.stdout
  assert "training matches kept per synthetic image" in process.stdout
  assert "prepare " in process.stdout  # the shipped configs, by name
  bad = subprocess.run([installed["python"], "-m", "memjax", "--config=no_such_config",
                        "--workdir=out"], cwd=installed["cwd"], env=installed["env"],
                       capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
  assert "no such config file or shipped config" in bad.stderr and "cxr_ddpm" in bad.stderr


def test_installed_command_audits_from_another_directory(installed, rng):
  cwd = installed["cwd"]
  train = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
  synthetic = np.concatenate([train[:2], rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)])
  for name, images in (("train", train), ("synthetic", synthetic)):
    (cwd / name).mkdir()
    for i, image in enumerate(images):
      Image.fromarray(image).save(cwd / name / f"{i:02d}.png")
  process = _run([installed["bin"] / "memjax", "--config=audit",
                  "--config.audit.synthetic_images=synthetic",
                  "--config.audit.training_images=train", "--config.audit.progress=false",
                  "--workdir=out"], cwd=cwd, env=installed["env"])
  lines = process.stdout.splitlines()
  assert lines[0] == ("decision: do not release: 2 synthetic images are copies of training "
                      "images by pixel correlation (r ≥ 0.9999)"), lines
  assert lines[1] == ("2 of 5 synthetic images memorized by pixel correlation (threshold 0.9500, "
                      "fixed; give --config.audit.holdout_images to calibrate it)"), lines
  assert lines[-1] == "next: open out/report.html"
  assert "I1" not in process.stderr and "audit.py:" not in process.stderr  # no absl INFO lines
  assert (cwd / "out" / "summary.json").is_file() and (cwd / "out" / "report.html").is_file()
