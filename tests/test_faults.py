"""The audit's faults of issue 15, each reproduced for real: a holdout set that overlaps the
training set, images on a huge offset, an all-constant training set, a killed audit, two audits
into one work dir, a full disk, a huge k, a bad setting, a DDPM work dir given as the encoder.

(The training faults are in test_faults_training.py, the data faults in test_faults_data.py.)
"""

import json
import logging
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import audit as audit_config_file
from memjax import cli
from memjax import outputs
from memjax import workflows
from memjax.memorization import audit
from memjax.memorization import search as search_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def textured(rng, count, shape=(12, 12)):
  return rng.standard_normal((count,) + shape).astype(np.float32)


def pearson_float64(a, b):
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  with np.errstate(invalid="ignore"):  # a constant image has no correlation
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
  return a @ b.T


def env():
  variables = dict(os.environ)
  variables.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
                   MPLBACKEND="Agg")
  variables.pop("MEMJAX_TRACEBACK", None)
  return variables


def launch(*args, wait=True, extra_env=None):
  command = [sys.executable, "launch.py", "--config=configs/audit.py",
             "--config.audit.progress=false", *args]
  variables = {**env(), **(extra_env or {})}
  if not wait:
    return subprocess.Popen(command, cwd=REPO_ROOT, env=variables, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, cwd=REPO_ROOT, env=variables, capture_output=True, text=True,
                        timeout=300, check=False)


# 1. A holdout set that overlaps the training set.


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
  rng = np.random.default_rng(0)
  train = textured(rng, 60)
  holdout = textured(rng, 40)
  holdout[[3, 17, 30]] = train[[5, 9, 9]]  # 3 of 40 held-out images are training images
  synthetic = np.concatenate([train[[1, 2, 4]], textured(rng, 12)])
  root = tmp_path_factory.mktemp("overlap")
  return dict(train=train, holdout=holdout, synthetic=synthetic, root=root)


def test_overlapping_holdout_images_are_left_out_named_and_reported(overlapping, caplog):
  with caplog.at_level(logging.WARNING):
    summary = audit.run_audit(overlapping["root"] / "some", synthetic=overlapping["synthetic"],
                              train=overlapping["train"], holdout=overlapping["holdout"],
                              progress=False, num_pairs=2)
  left_out = summary["holdout"]["left_out_identical_to_training"]
  assert left_out["count"] == 3 and left_out["kept"] == 37
  assert len(left_out["ids"]) == 3
  assert any("identical to training images" in r.message for r in caplog.records)
  # The threshold is the one of the 37 real held-out images, as float64 gives it.
  kept = np.delete(np.arange(40), [3, 17, 30])
  holdout_max = pearson_float64(overlapping["train"], overlapping["holdout"][kept]).max(axis=1)
  assert summary["threshold"]["value"] == pytest.approx(np.percentile(holdout_max, 95), abs=2e-5)
  threshold = summary["threshold"]["value"]
  assert threshold < 0.9
  best = pearson_float64(overlapping["synthetic"], overlapping["train"]).max(axis=1)
  assert summary["num_memorized"] == int(np.sum(best >= threshold))
  assert np.all(best[:3] >= threshold)  # the three exact copies are found
  page = (overlapping["root"] / "some" / "report.html").read_text("utf-8")
  assert "3 of 40 held-out images are identical to training images" in page


def test_a_holdout_set_equal_to_the_training_set_is_refused(overlapping):
  with pytest.raises(ValueError, match="every image of the holdout set"):
    audit.run_audit(overlapping["root"] / "all", synthetic=overlapping["synthetic"],
                    train=overlapping["train"], holdout=overlapping["train"], progress=False)


def test_a_calibrated_threshold_at_the_exactness_limit_is_an_error(overlapping):
  # Near-copies (not identical) of every training image as the holdout set.
  near = overlapping["train"] + 2e-3 * np.random.default_rng(1).standard_normal(
      overlapping["train"].shape).astype(np.float32)
  with pytest.raises(ValueError, match="limit of exactness"):
    audit.run_audit(overlapping["root"] / "near", synthetic=overlapping["synthetic"],
                    train=overlapping["train"], holdout=near, progress=False)


# 2. Images on a huge offset, and wide integers.


@pytest.mark.parametrize("dtype, offset, scale", [
    (np.float64, 1e7, 1.0), (np.float64, 1e8, 1.0), (np.float64, 1e200, 1e190),
    (np.int64, 2**62, 1), (np.uint64, 2**63 + 2**62, 1), (np.int32, 2**30, 1)])
def test_correlations_are_right_for_any_finite_offset(rng, dtype, offset, scale):
  texture = rng.integers(-100, 100, (30, 10, 10))
  synthetic_texture = np.concatenate([texture[[2, 7]], texture[[11]] + rng.integers(
      -30, 30, (1, 10, 10)), rng.integers(-100, 100, (3, 10, 10))])

  def on_offset(values):
    if np.issubdtype(dtype, np.integer):  # exact: offset + texture, modulo 2^64 for uint64
      return np.array(offset, dtype) + values.astype(np.int64).astype(dtype)
    return offset + scale * values.astype(np.float64)

  result = search_lib.search(on_offset(synthetic_texture), on_offset(texture), 3)
  reference = pearson_float64(synthetic_texture, texture)  # the texture alone: what Pearson sees
  order = np.argsort(-reference, axis=1, kind="stable")[:, :3]
  np.testing.assert_array_equal(result.indices, order)
  np.testing.assert_allclose(result.values, np.take_along_axis(reference, order, axis=1),
                             atol=1e-5)
  assert result.values[0, 0] == 1.0 and result.values[1, 0] == 1.0  # exact copies, refined
  assert result.zero_variance_synthetic.size == 0 and result.zero_variance_train.size == 0


# 3. An all-constant training set: the report and summary.json agree.


def test_all_constant_training_set_report_and_summary_agree(tmp_path, rng):
  train = np.stack([np.full((8, 8), v, np.float32) for v in range(10)])
  synthetic = textured(rng, 6, (8, 8))
  summary = audit.run_audit(tmp_path, synthetic=synthetic, train=train, progress=False,
                            num_pairs=1)
  assert summary["zero_variance"]["synthetic"]["count"] == 0
  assert summary["zero_variance"]["train"]["count"] == 10
  assert summary["num_synthetic_with_correlation"] == 0
  page = (tmp_path / "report.html").read_text("utf-8")
  assert "have zero variance" not in page
  assert "no training image has nonzero variance" in page


# 4, 7. Atomic outputs, one run per work dir, a full disk.


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  rng = np.random.default_rng(3)
  root = tmp_path_factory.mktemp("folders")
  train = rng.integers(0, 255, (400, 32, 32), dtype=np.uint8)
  np.save(root / "train.npy", train)
  np.save(root / "copies.npy", np.concatenate([train[:5], rng.integers(
      0, 255, (93, 32, 32), dtype=np.uint8)]))
  np.save(root / "novel.npy", rng.integers(0, 255, (98, 32, 32), dtype=np.uint8))
  return root


def audit_config(synthetic, train, **audit):
  config = audit_config_file.get_config()
  config.audit.synthetic_images = str(synthetic)
  config.audit.training_images = str(train)
  config.audit.progress = False
  for key, value in audit.items():
    config.audit[key] = value
  return config


def visible(workdir):
  """What a reader of `workdir` sees: each result file's bytes (through the `.current` link)."""
  return {p.name: p.read_bytes() for p in workdir.iterdir()
          if p.is_file() and not p.name.startswith(".")}


def test_a_killed_audit_leaves_the_previous_results_whole(folders, tmp_path):
  workdir = tmp_path / "audit"
  workflows.run(audit_config(folders / "copies.npy", folders / "train.npy"), workdir)
  before = visible(workdir)
  assert json.loads(before["summary.json"])["num_memorized"] == 5
  process = launch(f"--config.audit.synthetic_images={folders / 'novel.npy'}",
                   f"--config.audit.training_images={folders / 'train.npy'}",
                   f"--workdir={workdir}", wait=False)
  current = outputs.current_generation(workdir)
  deadline = time.monotonic() + 240
  while ({p.name for p in workdir.glob(".generation-*")} <= {current.name}
         and process.poll() is None):
    assert time.monotonic() < deadline
    time.sleep(0.005)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  if outputs.current_generation(workdir) != current:
    pytest.skip("the audit finished before it could be killed while writing")
  # Killed while staging: every file the reader sees is the earlier audit's.
  assert visible(workdir) == before
  # A re-run clears the killed run's generation folder and commits its own results.
  workflows.run(audit_config(folders / "novel.npy", folders / "train.npy"), workdir)
  assert json.loads((workdir / "summary.json").read_text())["num_memorized"] == 0
  assert len(list(workdir.glob(".generation-*"))) == 1


@pytest.mark.parametrize("step", ["staged", "swapped"])
def test_an_audit_killed_at_each_step_of_its_commit_shows_one_whole_result(folders, tmp_path,
                                                                          step):
  """A real SIGKILL right after each step of the commit (issue 25, items 1 and 2): before the
  swap the previous audit (k=5, 5 memorized) is whole, after it the new one (k=3) is."""
  workdir = tmp_path / "audit"
  workflows.run(audit_config(folders / "copies.npy", folders / "train.npy", k=5), workdir)
  before = visible(workdir)
  killed = launch(f"--config.audit.synthetic_images={folders / 'novel.npy'}",
                  f"--config.audit.training_images={folders / 'train.npy'}",
                  "--config.audit.k=3", f"--workdir={workdir}",
                  extra_env={"MEMJAX_TEST_KILL_AT": step})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  after = visible(workdir)
  assert sorted(after) == sorted(before)
  if step == "staged":
    assert after == before
    return
  assert all(after[name] != before[name] for name in ("summary.json", "matches.csv",
                                                        "config.json", "report.html"))
  folder = outputs.current_generation(workdir)
  for name in after:  # every file from the one new generation
    assert pathlib.Path(os.path.realpath(workdir / name)).parent == folder.resolve(), name
  summary = json.loads(after["summary.json"])
  assert summary["num_memorized"] == 0 and summary["k"] == 3
  rows = after["matches.csv"].decode().strip().splitlines()[1:]
  assert len(rows) == 3 * 98
  assert "k: 3" in after["config.json"].decode() or '"k": 3' in after["config.json"].decode()


@pytest.mark.parametrize("when", ["searching", "writing"])
def test_ctrl_c_is_one_line_exit_130_and_the_previous_results_stay(folders, tmp_path, when):
  """Issue 25, item 7: SIGINT while the audit searches (as soon as it holds the work dir) or
  while it writes (its files staged, not yet swapped in)."""
  workdir = tmp_path / "audit"
  workflows.run(audit_config(folders / "copies.npy", folders / "train.npy"), workdir)
  before = visible(workdir)
  args = (f"--config.audit.synthetic_images={folders / 'novel.npy'}",
          f"--config.audit.training_images={folders / 'train.npy'}", f"--workdir={workdir}")
  if when == "writing":
    process = launch(*args, extra_env={"MEMJAX_TEST_KILL_AT": "SIGINT:staged"})
    stderr = process.stderr
  else:
    started = launch(*args, wait=False)
    lock = workdir / ".memjax.lock"
    deadline = time.monotonic() + 120
    while lock.read_text().strip() != str(started.pid):
      assert time.monotonic() < deadline and started.poll() is None, started.stderr.read()
      time.sleep(0.005)
    started.send_signal(signal.SIGINT)
    _, stderr = started.communicate(timeout=120)
    process = started
    if process.returncode == 0:
      pytest.skip("the audit finished before Ctrl-C reached it")
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == cli.INTERRUPTED
  assert visible(workdir) == before
  assert len(list(workdir.glob(".generation-*"))) == 1  # the interrupted run's is gone


def test_a_failed_rerun_leaves_results_and_config_untouched(folders, tmp_path):
  workdir = tmp_path / "audit"
  workflows.run(audit_config(folders / "copies.npy", folders / "train.npy", k=2), workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  bad = tmp_path / "bad.npy"
  np.save(bad, np.full((4, 32, 32), np.nan, np.float32))
  with pytest.raises(ValueError, match="NaN or infinite"):
    workflows.run(audit_config(bad, folders / "train.npy"), workdir)
  after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  after.pop(".memjax.lock", None), before.pop(".memjax.lock", None)
  assert after == before


def test_two_audits_into_one_work_dir_one_fails_fast_naming_the_holder(folders, tmp_path):
  workdir = tmp_path / "audit"
  args = (f"--config.audit.synthetic_images={folders / 'copies.npy'}",
          f"--config.audit.training_images={folders / 'train.npy'}", f"--workdir={workdir}")
  first = launch(*args, wait=False)
  deadline = time.monotonic() + 120
  while not (workdir / ".memjax.lock").exists() or not (workdir / ".memjax.lock").read_text():
    assert time.monotonic() < deadline and first.poll() is None
    time.sleep(0.01)
  with pytest.raises(OSError, match=re.escape(f"in use by another memjax run (pid {first.pid})")):
    workflows.run(audit_config(folders / "novel.npy", folders / "train.npy"), workdir)
  _, first_err = first.communicate(timeout=300)
  assert first.returncode == 0, first_err
  assert json.loads((workdir / "summary.json").read_text())["num_memorized"] == 5


def test_a_full_disk_names_the_file_and_keeps_nothing_half_written(folders, tmp_path):
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
                    capture_output=True, check=False).returncode:
    pytest.skip("cannot mount a small tmpfs here")
  try:
    process = launch(f"--config.audit.synthetic_images={folders / 'copies.npy'}",
                     f"--config.audit.training_images={folders / 'train.npy'}",
                     "--config.audit.k=50", f"--workdir={mount / 'audit'}")
    assert process.returncode == 2, process.stderr
    line = process.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no space left on the device to write ")
    assert str(mount / "audit") in line and "needs about" in line
    left = sorted(p.name for p in (mount / "audit").iterdir())
    assert left in ([".memjax.lock"], []), left  # no cut matches.csv, no half pairs.png
  finally:
    subprocess.run(["umount", str(mount)], check=False)


def _limit_file_size(limit):
  def apply():  # in the child: writes past `limit` fail with EFBIG instead of killing it
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


@pytest.mark.parametrize("fault", ["full tmpfs", "file size limit"])
def test_a_full_disk_at_the_report_names_it_and_its_size(folders, tmp_path, fault):
  """Issue 25, item 10: the disk fills at report.html (the files before it fit): the error gives
  the page's size, as it does for the other files, and nothing is left half-written. On a real
  tmpfs, or where none can be mounted, under a file size limit that only the page exceeds."""
  reference = tmp_path / "reference"
  workflows.run(audit_config(folders / "copies.npy", folders / "train.npy"), reference)
  sizes = {p.name: p.stat().st_size for p in reference.iterdir()
           if p.is_file() and not p.name.startswith(".")}
  page = 4096
  before_report = sum(-(-sizes[name] // page) * page for name in (
      "matches.csv", "correlations.npz", "histogram.png", "pairs.png"))
  assert sizes["report.html"] > 4 * page  # the page cannot fit in the margin below
  mount = tmp_path / "small"
  mount.mkdir()
  mounted = not subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                               capture_output=True, check=False).returncode
  try:
    if fault == "full tmpfs":
      if not mounted:
        pytest.skip("cannot mount a small tmpfs here; the file size limit stands in for it")
      free = shutil.disk_usage(mount).free
      (mount / "filler").write_bytes(b"\0" * (free - before_report - 2 * page))
      limit = None
    else:
      if mounted and not os.environ.get("MEMJAX_TEST_FILE_LIMIT"):
        pytest.skip("a real full tmpfs is tested here")
      others = max(size for name, size in sizes.items() if name != "report.html")
      assert others < sizes["report.html"]
      limit = _limit_file_size((others + sizes["report.html"]) // 2)
    out = mount / "audit"
    command = [sys.executable, "launch.py", "--config=configs/audit.py",
               "--config.audit.progress=false",
               f"--config.audit.synthetic_images={folders / 'copies.npy'}",
               f"--config.audit.training_images={folders / 'train.npy'}", f"--workdir={out}"]
    process = subprocess.run(command, cwd=REPO_ROOT, env=env(), capture_output=True, text=True,
                             timeout=300, check=False, preexec_fn=limit)
    assert process.returncode == 2, process.stderr
    line = process.stderr.strip().splitlines()[-1]
    what = ("no space left on the device to write" if fault == "full tmpfs" else
            "the file size limit (ulimit -f) stopped the write of")
    prefix = f"error: {what} {out / 'report.html'}: it needs about "
    assert line.startswith(prefix), line
    needed = re.match(r"([0-9.]+) KB[;.]", line[len(prefix):])
    assert needed, line
    assert abs(float(needed.group(1)) * 1024 - sizes["report.html"]) < 0.05 * sizes["report.html"]
    left = sorted(p.name for p in out.iterdir())
    assert left in ([".memjax.lock"], []), left  # no generation folder, no report.html.tmp
  finally:
    if mounted:
      subprocess.run(["umount", str(mount)], check=False)


# 10, 12, 13. Settings.


def test_k_beyond_the_training_set_is_capped_with_one_warning(tmp_path, rng, caplog):
  train = textured(rng, 7)
  with caplog.at_level(logging.WARNING):
    summary = audit.run_audit(tmp_path, synthetic=textured(rng, 3), train=train, k=10_000,
                              progress=False, num_pairs=0)
  assert summary["k"] == 7
  assert sum("more than the 7 training images" in r.message for r in caplog.records) == 1
  assert len((tmp_path / "matches.csv").read_text().splitlines()) == 1 + 3 * 7


@pytest.mark.parametrize("change, message", [
    (dict(num_pairs=-1), "num_pairs must be an integer of at least 0"),
    (dict(k=0), "k must be an integer of at least 1"),
    (dict(precision="fast"), "precision must be one of"),
    (dict(threshold=1.5), "threshold must lie in"),
    (dict(detector="pixels"), "unknown detector"),
])
def test_every_setting_is_checked_before_any_search(tmp_path, rng, monkeypatch, change, message):
  def no_search(*args, **kwargs):
    raise AssertionError("searched before the settings were checked")

  monkeypatch.setattr(search_lib, "search", no_search)
  with pytest.raises(ValueError, match=message):
    audit.run_audit(tmp_path, synthetic=textured(rng, 3), train=textured(rng, 5),
                    progress=False, **change)


def test_a_ddpm_work_dir_as_the_encoder_is_named(tmp_path, rng):
  encoder = tmp_path / "ddpm_run"
  encoder.mkdir()
  (encoder / "config.json").write_text(json.dumps({"model": {"name": "ddpm"}}))
  np.save(tmp_path / "s.npy", textured(rng, 3))
  np.save(tmp_path / "t.npy", textured(rng, 5))
  process = launch(f"--config.audit.synthetic_images={tmp_path / 's.npy'}",
                   f"--config.audit.training_images={tmp_path / 't.npy'}",
                   "--config.audit.detector=embedding", f"--config.audit.encoder={encoder}",
                   f"--workdir={tmp_path / 'audit'}")
  assert process.returncode == 2
  assert process.stderr.strip().splitlines()[-1].startswith(
      f"error: --config.audit.encoder={encoder} is the work dir of a 'ddpm' model")
  assert "Traceback" not in process.stderr


# 8. Memory that does not grow with the image size.


def test_huge_images_are_searched_in_pixel_pieces_within_the_budget():
  from memjax.memorization import kernels  # pylint: disable=g-import-not-at-top
  from memjax.memorization import pieces  # pylint: disable=g-import-not-at-top
  budget = kernels.SearchBudget()
  # 8000x8000 8-bit images and BraTS-sized 5-channel volumes need pieces on 4 devices; 256x256
  # slices keep the row-tiled kernels (whose results the other tests pin bitwise).
  assert pieces.needs_pieces(8000 * 8000, 1, 4, budget)
  assert pieces.needs_pieces(240 * 240 * 155 * 5, 1, 4, budget)
  assert not pieces.needs_pieces(256 * 256 * 5, 4, 4, budget)
  rows = pieces._rows_per_group(8000 * 8000 * 8, budget.max_bytes)  # float64 images
  piece = pieces._piece_size(rows, 8000 * 8000, budget.max_bytes)
  held = 2 * rows * 8000 * 8000 * 8 + 2 * 2 * rows * piece * 8  # rows, float64 pieces, float32
  assert held <= budget.max_bytes


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_the_pixel_piece_search_is_exact(rng, dtype):
  # 3D volumes with 2 channels, searched with a budget far below the minimal row-tiled plan.
  shape = (6, 10, 12, 2)
  train = rng.integers(0, 255, (23,) + shape).astype(dtype)
  if dtype == np.float64:
    train = 1e8 + train  # an offset that float32 rows would round the texture away on
  train[9] = train[9].flat[0]  # a constant volume: never matched
  synthetic = np.concatenate([train[[4, 17]], train[[5]] + (rng.integers(-9, 9, (1,) + shape)),
                              rng.integers(0, 255, (4,) + shape).astype(dtype) + train[0].min()])
  synthetic = synthetic.astype(dtype)
  result = search_lib.search(synthetic, train, 3, memory_bytes=40_000)
  def shifted(images):  # Pearson does not see a shift; float64 does not lose 1e8's texture
    rows = images.reshape(len(images), -1).astype(np.float64)
    return rows - rows[:, :1]

  reference = pearson_float64(shifted(synthetic), shifted(train))
  reference[:, 9] = -np.inf
  order = np.argsort(-reference, axis=1, kind="stable")[:, :3]
  np.testing.assert_array_equal(result.indices, order)
  np.testing.assert_allclose(result.values, np.take_along_axis(reference, order, axis=1),
                             atol=1e-5)
  assert result.values[0, 0] == 1.0 and result.values[1, 0] == 1.0
  np.testing.assert_array_equal(result.zero_variance_train, [9])
  # The same answer as the row-tiled kernels give with the default budget.
  tiled = search_lib.search(synthetic, train, 3)
  np.testing.assert_array_equal(tiled.indices, result.indices)
  np.testing.assert_allclose(tiled.values, result.values, atol=2e-6)
  # A set against itself, each volume left out of its own matches.
  own = search_lib.search(train, train, 1, exclude=np.arange(23), memory_bytes=40_000)
  expected = pearson_float64(shifted(train), shifted(train))
  np.fill_diagonal(expected, -np.inf)
  expected[:, 9] = -np.inf
  defined = np.arange(23) != 9
  np.testing.assert_array_equal(own.indices[defined, 0], np.argmax(expected, axis=1)[defined])


# 11. Flag errors.


@pytest.mark.parametrize("argument, message", [
    ("--config.trian=x", "error: --config.trian is not a key of configs/audit.py; did you mean "
                         "--config.train?"),
    ("--config.audit.precison=float32", "error: --config.audit.precison is not a key of "
                                        "configs/audit.py; did you mean --config.audit.precision?"),
    ("--config.audit.foo=1", "error: --config.audit.foo is not a key of configs/audit.py"),
    ("--config.audit.k=abc", "error: flag --config.audit.k=abc: invalid literal for int()"),
])
def test_a_bad_flag_is_one_line(tmp_path, argument, message):
  process = launch(argument, f"--workdir={tmp_path}")
  assert process.returncode == 2
  lines = process.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), process.stderr
