"""Whole results or none: a commit killed (SIGKILL, in a subprocess) after each of its steps
leaves a folder that reads as the whole old result or the whole new one, and the next run
cleans up and commits its own."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from memjax import outputs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
OWNED = ("matches.csv", "correlations.npz", "embeddings.npz", "report.html", "summary.json")
OLD = {"matches.csv": "k=5", "embeddings.npz": "old vectors", "report.html": "6 of 20",
       "summary.json": "old"}
NEW = {"matches.csv": "k=3", "correlations.npz": "new arrays", "report.html": "2 of 20",
       "config.json": "k: 3", "summary.json": "new"}
COMMIT = textwrap.dedent("""
    import json, pathlib, sys
    from memjax import outputs
    out, files, owned = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    with outputs.Staging(out, marker="summary.json", owned=owned) as staging:
      for name, text in files.items():
        (staging.path / name).write_text(text)
      staging.commit()
    """)


def commit(out, files, kill_at=None):
  """Commits `files` into `out` in a subprocess, SIGKILLed after step `kill_at`; its status."""
  import json  # pylint: disable=import-outside-toplevel
  variables = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  if kill_at:
    variables["MEMJAX_TEST_KILL_AT"] = kill_at
  return subprocess.run([sys.executable, "-c", COMMIT, str(out), json.dumps(files),
                         json.dumps(OWNED + ("config.json",))], env=variables,
                        capture_output=True, text=True, timeout=60, check=False)


def view(out):
  """What a reader of `out` sees: every result file's text."""
  names = set(OWNED) | set(OLD) | set(NEW)
  return {name: (out / name).read_text() for name in sorted(names) if (out / name).is_file()}


# Each step of a commit from OLD to NEW, in order, and whether the new result is visible after it.
STEPS = [("staged", False), ("linked correlations.npz", False), ("linked config.json", False),
         ("swapped", True), ("unlinked embeddings.npz", True), ("cleaned", True)]


@pytest.mark.parametrize("legacy", [False, True], ids=["generations", "plain-files"])
def test_a_commit_killed_after_any_step_leaves_the_old_or_the_new_result_whole(tmp_path, legacy):
  steps = list(STEPS)
  if legacy:  # an older memjax's folder: the results as plain files, adopted first
    steps[1:1] = [("adopted", False)] + [(f"adopted {name}", False) for name in sorted(OLD)]
  for step, new_visible in steps:
    out = tmp_path / step.replace(" ", "_")
    if legacy:
      out.mkdir()
      for name, text in OLD.items():
        (out / name).write_text(text)
    else:
      assert commit(out, OLD).returncode == 0
    assert view(out) == OLD
    killed = commit(out, NEW, kill_at=step)
    assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
    assert view(out) == (NEW if new_visible else OLD), step
    # The next run deletes what the killed one left and commits its own result, whole.
    again = {**NEW, "summary.json": "again"}
    finished = commit(out, again)
    assert finished.returncode == 0, finished.stderr
    assert view(out) == again
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert len(hidden) == 2 and hidden[0] == ".current", hidden  # one generation, one link
    assert outputs.current_generation(out).name == hidden[1]
    assert outputs.results_folder(out) == out / hidden[1]


def test_a_commit_is_one_rename_of_the_current_link(tmp_path):
  """Every visible change is the swap of `.current`: the result files are links through it."""
  out = tmp_path / "out"
  assert commit(out, OLD).returncode == 0
  first = outputs.current_generation(out)
  assert commit(out, NEW).returncode == 0
  second = outputs.current_generation(out)
  assert first != second and not first.exists()
  for name in NEW:
    assert os.readlink(out / name) == f".current/{name}"
    assert (second / name).read_text() == NEW[name]
  assert not (out / "embeddings.npz").is_symlink()  # the old run's only file is gone


def test_a_failed_step_leaves_no_generation_behind(tmp_path):
  out = tmp_path / "out"
  assert commit(out, OLD).returncode == 0
  before = sorted(p.name for p in out.iterdir())
  with pytest.raises(RuntimeError, match="summary.json was not written"):
    with outputs.Staging(out, marker="summary.json", owned=OWNED) as staging:
      (staging.path / "matches.csv").write_text("half")
      staging.commit()
  assert sorted(p.name for p in out.iterdir()) == before
  assert view(out) == OLD
