"""The README runs as written: every command and Python block in it is executed here, in a fresh
folder that holds what a checkout holds (launch.py, configs/, tools/), as a user runs them (one
CPU device; `memjax` is the console script, `python -m memjax`).

Every block is classified below by its first line, and a block that is not is a failure:
- FAST blocks run in CI, and the figures printed beside them are compared with the run;
- SLOW blocks train models for minutes: marked `slow`, they run with MEMJAX_SLOW=1;
- CLUSTER blocks start cloud machines or Slurm jobs: they are checked by `bash -n`;
- CI: the quick start's test command is what .ci/run runs;
- OUTPUT blocks are printed results: those of fast runs are compared here, the others name the
  slow run they come from.
Python blocks must define every name they use (no NameError), which is checked for all of them.
Upper-case placeholders (SYNTHETIC, TRAIN, HOLDOUT, OUT, ...) are replaced by real paths.
"""

import ast
import builtins
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
SLOW = pytest.mark.slow


def _blocks():
  """(first line, language, text) of every fenced block of the README, in order."""
  found = []
  for match in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M):
    text = match.group(2)
    found.append((text.splitlines()[0], match.group(1), text))
  return found


BLOCKS = _blocks()

# First lines (prefixes) of the blocks, by how they are checked.
FAST = {
    "audit": "python launch.py --config=configs/audit.py --config.audit.synthetic_images=SYNTHETIC",
    "example": "python tools/make_example_data.py --out=runs/example_data",
    "prepare": "memjax --config=prepare --config.prepare.dataset=mni152/64",
    "search": "import numpy as np\nfrom memjax.data.sources import open_source\nfrom memjax.memorization import top_k",
}
SLOW_BLOCKS = {  # in the order they run: later ones use what earlier ones wrote
    "quick_start": "pip install -e . && python launch.py --config=configs/demo.py",
    "demo_ddpm": "python launch.py --config=configs/demo_ddpm.py --workdir=runs/demo_ddpm ",
    "encoder": "python launch.py --config=configs/demo_contrastive.py --workdir=runs/encoder",
    "measures": "from memjax.data.sources import open_source\nfrom memjax.memorization import (search_emb",
    "own_images": "python launch.py --config=configs/demo_ddpm.py --config.data.source=runs/example_data",
    "stylegan2": "python launch.py --config=configs/demo_stylegan2.py --workdir=runs/demo_stylegan2 ",
}
CLUSTER = ("NAME=memjax-v4-32 ZONE=", "#!/bin/bash", "# on 10.0.0.1",
           "pip install -e '.[cuda]'")  # the last: GPUs and TPUs (gpu_check --small is tested)
# Python blocks that need a file only the user has: checked for names, not run.
USER_FILES = ("import numpy as np\nfrom flax import nnx\nfrom memjax.models import stylegan2",)
OUTPUT = {
    "summary": "decision: do not release: 2 synthetic images are copies of training images",
    "matches": "copy_exact_1_of_train_0074.png,1,train_0074.png",
    "summary_json": '"threshold": {"value": ',
    "validation": "% flagged at the calibrated threshold",  # tools/validate_detectors.py (slow)
    "layout": "launch.py            python launch.py = the memjax command",  # files, not a run
}
PLACEHOLDERS = {"SYNTHETIC": "runs/example_data/synthetic", "TRAIN": "runs/example_data/train",
                "HOLDOUT": "runs/example_data/holdout", "OUT": "runs/out"}
# The contrastive detector's command audits the demo DDPM's samples against its MNI152 slices.
MNI_PLACEHOLDERS = {"SYNTHETIC": "runs/demo_ddpm/samples", "TRAIN": "tfds:mni152/64:train",
                    "HOLDOUT": "tfds:mni152/64:holdout", "OUT": "runs/encoder_audit"}


def _block(prefix):
  found = [text for first, _, text in BLOCKS if text.startswith(prefix)]
  assert len(found) == 1, f"{len(found)} README blocks start with {prefix!r}"
  return found[0]


def _after(prefix):
  """The block that follows the one starting with `prefix` (its printed output)."""
  texts = [text for _, _, text in BLOCKS]
  index = texts.index(_block(prefix))
  return texts[index + 1]


def test_every_block_is_checked():
  prefixes = (list(FAST.values()) + list(SLOW_BLOCKS.values()) + list(CLUSTER)
              + list(USER_FILES) + list(OUTPUT.values()) + ["pip install -e . && python launch.py"])
  for first, language, text in BLOCKS:
    matching = [p for p in prefixes if text.startswith(p)]
    assert matching, f"README block {first!r} ({language}) is not checked by tests/test_readme.py"
  # The quick start stays two commands: the main job, and the tests (what .ci/run runs).
  assert _block(SLOW_BLOCKS["quick_start"]).splitlines() == [
      "pip install -e . && python launch.py --config=configs/demo.py --workdir=runs/demo",
      "pip install -e '.[test]' && pytest"]


@pytest.mark.parametrize("text", [text for _, language, text in BLOCKS if language == "python"],
                         ids=lambda text: text.splitlines()[-1][:40])
def test_python_blocks_define_what_they_use(text):
  first = text.splitlines()[-1]
  tree = ast.parse(text)
  defined = set(dir(builtins))
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      defined.add(node.id)
    elif isinstance(node, ast.arg):
      defined.add(node.arg)
  used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
  assert used <= defined, f"README block {first!r} uses undefined {sorted(used - defined)}"


@pytest.mark.parametrize("prefix", CLUSTER)
def test_cluster_blocks_are_valid_shell(prefix):
  for text in [t for _, _, t in BLOCKS if t.startswith(prefix)]:
    done = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{prefix!r}: {done.stderr}"


# ----------------------------------------------------------------------------------------------
# Running blocks.


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """A folder holding what a checkout holds, and an environment where `memjax` and `python` are
  what a user's are."""
  root = tmp_path_factory.mktemp("readme")
  for name in ("launch.py", "configs", "tools"):
    (root / name).symlink_to(REPO_ROOT / name)
  bin_dir = root / ".bin"
  bin_dir.mkdir()
  for name, command in (("python", ""), ("memjax", " -m memjax")):  # memjax: the console script
    (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}"{command} "$@"\n')
    (bin_dir / name).chmod(0o755)
  env = {key: value for key, value in os.environ.items() if key not in ("MEMJAX_TRACEBACK",)}
  env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
  env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH")] if p)
  flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=4", "")
  env["XLA_FLAGS"] = flags.strip()  # one CPU device, as the README's figures
  env["MEMJAX_DATA_DIR"] = str(root / "data")
  return {"root": root, "env": env}


def _substituted(text, placeholders):
  text = re.sub(r"\[(--[^\]]+)\]", r"\1", text)  # [--optional=VALUE]: given
  for name, value in placeholders.items():
    text = re.sub(rf"\b{name}\b", value, text)
  return text


def _run_bash(workspace, text, placeholders=PLACEHOLDERS, timeout=600):
  done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", _substituted(text, placeholders)],
                        cwd=workspace["root"], env=workspace["env"], capture_output=True,
                        text=True, timeout=timeout, check=False)
  assert done.returncode == 0, f"{text}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
  return done


def _run_python(workspace, text, timeout=600):
  done = subprocess.run([sys.executable, "-c", text], cwd=workspace["root"],
                        env=workspace["env"], capture_output=True, text=True, timeout=timeout,
                        check=False)
  assert done.returncode == 0, f"{text}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
  return done


@pytest.fixture(scope="module")
def example(workspace):
  """The example audit, run as the README says."""
  return _run_bash(workspace, _block(FAST["example"]))


def test_example_audit_prints_what_the_readme_shows(example):
  printed = [line for line in example.stdout.splitlines() if not line.startswith("wrote ")]
  assert printed == _after(FAST["example"]).splitlines()
  assert "I1" not in example.stderr and "audit.py:" not in example.stderr  # no absl INFO lines


def test_example_matches_and_summary_are_the_readmes(example, workspace):
  out = workspace["root"] / "runs" / "example_audit"
  with open(out / "matches.csv", newline="") as f:
    rows = [row for row in csv.reader(f)][1:]
  by_correlation = lambda row: (-float(row[3]), row[0])  # noqa: E731  (ties by name)
  best = sorted((row for row in rows if row[1] == "1"), key=by_correlation)
  shown = [line.split(",") for line in _block(OUTPUT["matches"]).splitlines()]
  assert best[:len(shown)] == sorted(shown, key=by_correlation)

  summary = json.loads((out / "summary.json").read_text())
  text = _block(OUTPUT["summary_json"]).replace(", ...", "")
  shown = json.loads("{" + text.strip().rstrip(",") + "}")

  def compare(shown, found, where):
    if isinstance(shown, dict):
      for key, value in shown.items():
        if key != "seconds":  # a timing
          compare(value, found[key], f"{where}.{key}")
    elif isinstance(shown, float):
      decimals = len(repr(shown).split(".")[1]) if "." in repr(shown) else 0
      assert abs(found - shown) <= 0.5 * 10**-decimals + 1e-12, (where, shown, found)
    elif where.endswith("precision"):
      assert found in ("float32", "bfloat16x3")  # the machine's matrix unit decides
    else:
      assert found == shown, (where, shown, found)

  compare(shown, summary, "summary")
  # Held-out phantoms of other "patients": no calibration warning, and a verdict with reasons.
  assert summary["warnings"] == []
  assert summary["decision"]["verdict"] == "do not release"  # the example plants exact copies
  assert summary["decision"]["reasons"][0].startswith("2 synthetic images are copies")


def test_audit_command_with_its_placeholders(example, workspace):
  del example  # its images
  _run_bash(workspace, _block(FAST["audit"]))
  assert (workspace["root"] / "runs" / "out" / "summary.json").is_file()


def test_search_as_a_library(example, workspace):
  del example
  _run_python(workspace, _block(FAST["search"]))


def test_preparing_data_sets(workspace):
  """mni152 ships with nilearn and is prepared; BraTS and the x-rays need the user's files: their
  commands stop with one line naming the missing folder."""
  lines = _block(FAST["prepare"]).splitlines()
  done = _run_bash(workspace, lines[0])
  assert "mni152/64/1.0.0 prepared in" in done.stdout
  assert "Downloading" not in done.stdout  # nothing is downloaded
  for line in lines[1:]:
    failed = subprocess.run(["bash", "-c", line], cwd=workspace["root"], env=workspace["env"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert "manual_dir" in failed.stderr and "does not exist" in failed.stderr


# Minutes of training each: MEMJAX_SLOW=1 pytest tests/test_readme.py -k slow_block.
@SLOW
@pytest.mark.parametrize("name", list(SLOW_BLOCKS))
def test_slow_block(name, workspace, example):
  del example  # the own-images block trains on its images
  text = _block(SLOW_BLOCKS[name])
  if name == "quick_start":  # the first command (the second is the test suite, .ci/run's)
    text = text.splitlines()[0].split("&&", 1)[1]
  if name == "measures":
    _run_python(workspace, text, timeout=3600)
    return
  done = _run_bash(workspace, text, MNI_PLACEHOLDERS if name == "encoder" else PLACEHOLDERS,
                   timeout=3600)
  if name == "own_images":  # the audit command that sample printed, run as printed
    (audit,) = [line.split(": ", 1)[1] for line in done.stdout.splitlines()
                if line.startswith("next, audit them: ")]
    assert audit in " ".join(README.split()), audit  # the README shows it
    _run_bash(workspace, audit)
