"""End-to-end tests of the command line: `python launch.py --config=configs/audit.py ...`.

Each test builds small folders of images in tmp_path and runs launch.py as a user does (a
subprocess on 4 forced CPU devices, so that the sharded search runs), then checks what it wrote
against correlations computed independently in float64 numpy. Behaviour that needs no process of
its own (which exception a bad input raises) is tested in-process through `workflows.run`.
Subprocess runs cost seconds of jax start-up each, so the module keeps them few: one per fixture
and a handful for the exit-status contract.
"""

import base64
import csv
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
from PIL import Image
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from configs import audit as audit_config  # noqa: E402  (needs the repo root on sys.path)
from memjax import workflows  # noqa: E402

# The exceptions that launch.py turns into one line and exit status 2.
USER_ERRORS = (ValueError, OSError, NotImplementedError)  # what launch.py reports in one line
MATCHES_HEADER = ["synthetic", "rank", "train", "correlation", "memorized"]
TOLERANCE = 1e-5
SHAPE = (32, 32)


# ----------------------------------------------------------------------------------------------
# Helpers.


def _smooth_image(rng, shape=SHAPE, low=30.0, high=225.0):
  """A random image with smooth structure (low-pass filtered noise) scaled to [low, high]."""
  noise = rng.standard_normal(shape)
  fy = np.fft.fftfreq(shape[0])[:, None]
  fx = np.fft.fftfreq(shape[1])[None, :]
  smooth = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-(fy**2 + fx**2) / (2 * 0.08**2))).real
  smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
  return low + (high - low) * smooth


def _to_uint8(image):
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _save_png(path, array):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def _save_pngs(folder, prefix, images):
  """Saves images as folder/PREFIX_000.png, ...; returns their ids (file names) in order."""
  names = [f"{prefix}_{i:03d}.png" for i in range(len(images))]
  for name, image in zip(names, images):
    _save_png(pathlib.Path(folder) / name, image)
  return names


def _pearson(a, b):
  """Pearson correlations (len(a), len(b)) in float64; NaN where an image has zero variance."""
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  norm_a = np.linalg.norm(a, axis=1)
  norm_b = np.linalg.norm(b, axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    corr = (a @ b.T) / norm_a[:, None] / norm_b[None, :]
  corr[norm_a == 0] = np.nan
  corr[:, norm_b == 0] = np.nan
  return corr


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  env["MPLBACKEND"] = "Agg"
  env.pop("MEMJAX_TRACEBACK", None)
  return env


def _launch(*args, config="configs/audit.py"):
  """Runs launch.py from the repo root; returns the CompletedProcess (text output)."""
  command = [sys.executable, "launch.py", f"--config={config}", *args]
  return subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                        timeout=180, check=False)


def _audit_args(workdir, synthetic, train, holdout=None, *extra):
  args = [f"--config.audit.synthetic_images={synthetic}",
          f"--config.audit.training_images={train}", f"--workdir={workdir}"]
  if holdout is not None:
    args.append(f"--config.audit.holdout_images={holdout}")
  return args + list(extra)


def _check_success(process):
  assert process.returncode == 0, (
      f"launch.py exited {process.returncode}\nstdout:\n{process.stdout}\n"
      f"stderr:\n{process.stderr}")


def _check_user_error(process, *fragments):
  """Exit status 2 and exactly one stderr line `error: ...` holding every fragment."""
  assert process.returncode == 2, (
      f"expected exit status 2, got {process.returncode}\nstderr:\n{process.stderr}")
  assert "Traceback" not in process.stderr, process.stderr
  lines = process.stderr.strip("\n").splitlines()
  assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{process.stderr}"
  assert lines[0].startswith("error: "), lines[0]
  for fragment in fragments:
    assert str(fragment) in lines[0], f"{fragment!r} not in {lines[0]!r}"
  return lines[0]


def _audit_dir(workdir):
  """Where the audit's files lie: the work dir's audit/ folder (docs/architecture.md) or the work dir."""
  workdir = pathlib.Path(workdir)
  return workdir / "audit" if (workdir / "audit" / "matches.csv").exists() else workdir


def _read_outputs(workdir):
  """Everything the audit wrote, read into memory (so tests do not depend on the run order)."""
  out = _audit_dir(workdir)
  matches_text = (out / "matches.csv").read_text()
  rows = list(csv.reader(io.StringIO(matches_text)))
  return {
      "matches_text": matches_text,
      "header": rows[0],
      "rows": [dict(zip(rows[0], row)) for row in rows[1:]],
      "summary": json.loads((out / "summary.json").read_text()),
      "config": json.loads((pathlib.Path(workdir) / "config.json").read_text()),
      "histogram": (out / "histogram.png").read_bytes(),
      "pairs": (out / "pairs.png").read_bytes(),
      "report": (out / "report.html").read_text(),
  }


def _rows_by_synthetic(rows):
  grouped = {}
  for row in rows:
    grouped.setdefault(row["synthetic"], []).append(row)
  return grouped


def _fraction_at_or_above(values, threshold):
  defined = values[np.isfinite(values)]
  return float(np.mean(defined >= threshold)) if defined.size else None


def _config(synthetic=None, train=None, holdout=None, **audit_overrides):
  config = audit_config.get_config()
  config.audit.synthetic_images = None if synthetic is None else str(synthetic)
  config.audit.training_images = None if train is None else str(train)
  config.audit.holdout_images = None if holdout is None else str(holdout)
  config.audit.progress = False
  for key, value in audit_overrides.items():
    config.audit[key] = value
  return config


# ----------------------------------------------------------------------------------------------
# 1. An audit with a holdout set, planted copies among the synthetic images.


K = 3
EXACT_COPIES = {"syn_003.png": 7, "syn_009.png": 41}  # synthetic id -> training index
SCALED_COPY = ("syn_005.png", 12)  # 0.7 * x + 40, clipped
NOISY_COPY = ("syn_012.png", 30)  # x + N(0, 3^2), clipped


@pytest.fixture(scope="module")
def holdout_audit(tmp_path_factory):
  """60 training, 20 holdout and 15 synthetic 32x32 PNGs; the audit run once through the CLI."""
  rng = np.random.default_rng(20240601)
  root = tmp_path_factory.mktemp("holdout_audit")
  train = np.stack([_to_uint8(_smooth_image(rng)) for _ in range(60)])
  holdout = np.stack([_to_uint8(_smooth_image(rng)) for _ in range(20)])
  synthetic = np.stack([_to_uint8(_smooth_image(rng)) for _ in range(15)])
  for name, j in EXACT_COPIES.items():
    synthetic[int(name[4:7])] = train[j]
  name, j = SCALED_COPY
  synthetic[int(name[4:7])] = _to_uint8(0.7 * train[j].astype(np.float64) + 40.0)
  name, j = NOISY_COPY
  synthetic[int(name[4:7])] = _to_uint8(train[j] + rng.normal(0.0, 3.0, SHAPE))

  paths = {name: root / name for name in ("synthetic", "train", "holdout")}
  train_ids = _save_pngs(paths["train"], "tr", train)
  _save_pngs(paths["holdout"], "ho", holdout)
  synthetic_ids = _save_pngs(paths["synthetic"], "syn", synthetic)
  workdir = root / "run"
  process = _launch(*_audit_args(workdir, paths["synthetic"], paths["train"], paths["holdout"],
                                 f"--config.audit.k={K}"))
  _check_success(process)
  return {
      "paths": paths, "workdir": workdir, "process": process,
      "train": train, "holdout": holdout, "synthetic": synthetic,
      "train_ids": train_ids, "synthetic_ids": synthetic_ids,
      "outputs": _read_outputs(workdir),
  }


def test_holdout_audit_matches_csv_layout(holdout_audit):
  """k rows per synthetic image, ranks 1..k, relative-path ids, `memorized` on rank 1 only."""
  outputs = holdout_audit["outputs"]
  assert outputs["header"] == MATCHES_HEADER
  rows = outputs["rows"]
  assert len(rows) == K * len(holdout_audit["synthetic_ids"])
  grouped = _rows_by_synthetic(rows)
  assert list(grouped) == holdout_audit["synthetic_ids"]
  for synthetic_id, group in grouped.items():
    assert [int(row["rank"]) for row in group] == list(range(1, K + 1)), synthetic_id
    assert group[0]["memorized"] in ("true", "false")
    assert all(row["memorized"] == "" for row in group[1:])
    assert all(row["train"] in holdout_audit["train_ids"] for row in group)
    assert len({row["train"] for row in group}) == K


def test_holdout_audit_correlations_match_float64(holdout_audit):
  """Each listed correlation is the float64 Pearson value, and the k listed are the k best."""
  corr = _pearson(holdout_audit["synthetic"], holdout_audit["train"])
  train_index = {name: j for j, name in enumerate(holdout_audit["train_ids"])}
  grouped = _rows_by_synthetic(holdout_audit["outputs"]["rows"])
  for i, synthetic_id in enumerate(holdout_audit["synthetic_ids"]):
    group = grouped[synthetic_id]
    listed = np.array([float(row["correlation"]) for row in group])
    reference = np.array([corr[i, train_index[row["train"]]] for row in group])
    np.testing.assert_allclose(listed, reference, atol=TOLERANCE, err_msg=synthetic_id)
    best = np.sort(corr[i])[::-1][:K]
    np.testing.assert_allclose(listed, best, atol=TOLERANCE, err_msg=synthetic_id)
    assert np.all(np.diff(listed) <= 0), synthetic_id


def test_holdout_audit_finds_planted_copies(holdout_audit):
  """Exact, intensity-scaled and noisy copies map to their training file and are memorized."""
  grouped = _rows_by_synthetic(holdout_audit["outputs"]["rows"])
  train_ids = holdout_audit["train_ids"]
  planted = [(name, j, 0.999) for name, j in EXACT_COPIES.items()]
  planted += [(*SCALED_COPY, 0.999), (*NOISY_COPY, 0.99)]
  for synthetic_id, j, minimum in planted:
    best = grouped[synthetic_id][0]
    assert best["train"] == train_ids[j], synthetic_id
    assert float(best["correlation"]) >= minimum, best
    assert best["memorized"] == "true", best
  for name in EXACT_COPIES:
    assert float(grouped[name][0]["correlation"]) == pytest.approx(1.0, abs=TOLERANCE)


def test_holdout_audit_threshold_is_calibrated(holdout_audit):
  """Dar et al.'s rule: 95th percentile of each training image's best holdout correlation."""
  summary = holdout_audit["outputs"]["summary"]
  holdout_max = np.nanmax(_pearson(holdout_audit["train"], holdout_audit["holdout"]), axis=1)
  expected = np.percentile(holdout_max, 95.0)
  assert summary["threshold"]["rule"] == "holdout_percentile"
  assert summary["threshold"]["value"] == pytest.approx(expected, abs=TOLERANCE)
  assert summary["threshold"]["description"]
  quantiles = summary["holdout_max_correlation_quantiles"]
  reference = np.percentile(holdout_max, [0, 5, 25, 50, 75, 95, 100])
  for key, value in zip(("min", "q05", "q25", "median", "q75", "q95", "max"), reference):
    assert quantiles[key] == pytest.approx(value, abs=TOLERANCE), key
  assert quantiles["mean"] == pytest.approx(holdout_max.mean(), abs=TOLERANCE)


def test_holdout_audit_summary(holdout_audit):
  """Counts, k, fraction memorized at the calibrated and fixed thresholds, quantiles."""
  summary = holdout_audit["outputs"]["summary"]
  max_correlation = np.nanmax(_pearson(holdout_audit["synthetic"], holdout_audit["train"]),
                              axis=1)
  threshold = summary["threshold"]["value"]
  for t in (threshold, 0.90, 0.95, 0.99):
    assert np.min(np.abs(max_correlation - t)) > 1e-4, f"fixture too close to threshold {t}"

  assert summary["synthetic"]["count"] == 15
  assert summary["train"]["count"] == 60
  assert summary["holdout"]["count"] == 20
  for role in ("synthetic", "train", "holdout"):
    assert summary[role]["image_shape"] == list(SHAPE)
    assert summary[role]["source"] == str(holdout_audit["paths"][role])
  assert summary["k"] == K
  assert summary["num_synthetic_with_correlation"] == 15
  memorized = max_correlation >= threshold
  assert summary["num_memorized"] == int(memorized.sum())
  assert summary["num_memorized"] >= 4  # the planted copies
  assert summary["fraction_memorized"] == pytest.approx(memorized.sum() / 15)
  assert summary["fraction_above"] == pytest.approx(
      {f"{t:.2f}": _fraction_at_or_above(max_correlation, t) for t in (0.90, 0.95, 0.99)})
  quantiles = summary["max_correlation_quantiles"]
  reference = np.percentile(max_correlation, [0, 5, 25, 50, 75, 95, 100])
  for key, value in zip(("min", "q05", "q25", "median", "q75", "q95", "max"), reference):
    assert quantiles[key] == pytest.approx(value, abs=TOLERANCE), key
  assert quantiles["mean"] == pytest.approx(max_correlation.mean(), abs=TOLERANCE)
  assert summary["zero_variance"] == {"synthetic": {"count": 0, "ids": []},
                                      "train": {"count": 0, "ids": []}}

  # matches.csv agrees with the summary image by image.
  grouped = _rows_by_synthetic(holdout_audit["outputs"]["rows"])
  flags = [grouped[name][0]["memorized"] == "true" for name in holdout_audit["synthetic_ids"]]
  np.testing.assert_array_equal(flags, memorized)


def test_holdout_audit_figures_report_and_config(holdout_audit):
  """histogram.png and pairs.png decode; report.html embeds its images; config.json is saved."""
  outputs = holdout_audit["outputs"]
  for name in ("histogram", "pairs"):
    with Image.open(io.BytesIO(outputs[name])) as image:
      assert image.format == "PNG", name
      image.load()
      assert image.size[0] > 0 and image.size[1] > 0
  report = outputs["report"]
  sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', report)
  assert len(sources) >= 2, "report.html embeds no images"
  for source in sources:
    assert source.startswith("data:image/png;base64,"), source[:80]
    with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
      assert image.format == "PNG"
  config = outputs["config"]
  assert config["workflow"] == "audit"
  assert config["audit"]["synthetic_images"] == str(holdout_audit["paths"]["synthetic"])
  assert config["audit"]["training_images"] == str(holdout_audit["paths"]["train"])
  assert config["audit"]["holdout_images"] == str(holdout_audit["paths"]["holdout"])
  assert config["audit"]["k"] == K


def test_rerun_into_same_workdir_is_identical(holdout_audit):
  """Running the same command again overwrites every file cleanly, with identical matches."""
  out = _audit_dir(holdout_audit["workdir"])
  # A stale, longer file must be replaced, not partly overwritten.
  (out / "matches.csv").write_text("stale\n" * 10000)
  (out / "summary.json").write_text("{not json")
  paths = holdout_audit["paths"]
  process = _launch(*_audit_args(holdout_audit["workdir"], paths["synthetic"], paths["train"],
                                 paths["holdout"], f"--config.audit.k={K}"))
  _check_success(process)
  again = _read_outputs(holdout_audit["workdir"])
  first = holdout_audit["outputs"]
  assert again["matches_text"] == first["matches_text"]
  for summary in (again["summary"], first["summary"]):
    for part in (summary, *summary["detectors"].values()):
      part["search"].pop("seconds")
    summary["provenance"].pop("created")  # the one thing that differs: when it ran
  assert again["summary"] == first["summary"]


# ----------------------------------------------------------------------------------------------
# 2 and 3. Without a holdout set: the fixed threshold; zero-variance images.


@pytest.fixture(scope="module")
def fixed_threshold_audit(tmp_path_factory):
  """12 training PNGs and a constant one; 5 synthetic: a copy, a constant image, 3 novel."""
  rng = np.random.default_rng(7)
  root = tmp_path_factory.mktemp("fixed_threshold_audit")
  train = [_to_uint8(_smooth_image(rng)) for _ in range(12)]
  train_ids = _save_pngs(root / "train", "tr", train)
  _save_png(root / "train" / "tr_const.png", np.full(SHAPE, 90, np.uint8))
  synthetic = [train[4]] + [_to_uint8(_smooth_image(rng)) for _ in range(3)]
  synthetic_ids = _save_pngs(root / "synthetic", "syn", synthetic)
  _save_png(root / "synthetic" / "syn_const.png", np.full(SHAPE, 128, np.uint8))
  workdir = root / "run"
  process = _launch(*_audit_args(workdir, root / "synthetic", root / "train", None,
                                 "--config.audit.threshold=0.9", "--config.audit.k=2"))
  _check_success(process)
  return {"train": np.stack(train), "synthetic": np.stack(synthetic), "train_ids": train_ids,
          "synthetic_ids": synthetic_ids, "outputs": _read_outputs(workdir)}


def test_fixed_threshold_without_holdout(fixed_threshold_audit):
  summary = fixed_threshold_audit["outputs"]["summary"]
  assert summary["threshold"]["rule"] == "fixed"
  assert summary["threshold"]["value"] == pytest.approx(0.9)
  assert summary["holdout"] is None
  assert summary["holdout_max_correlation_quantiles"] is None
  max_correlation = np.nanmax(
      _pearson(fixed_threshold_audit["synthetic"], fixed_threshold_audit["train"]), axis=1)
  memorized = max_correlation >= 0.9
  assert summary["num_memorized"] == int(memorized.sum()) == 1
  assert summary["fraction_memorized"] == pytest.approx(memorized.mean())
  grouped = _rows_by_synthetic(fixed_threshold_audit["outputs"]["rows"])
  best = grouped["syn_000.png"][0]
  assert best["train"] == "tr_004.png"
  assert best["memorized"] == "true"
  for i, name in enumerate(fixed_threshold_audit["synthetic_ids"]):
    assert float(grouped[name][0]["correlation"]) == pytest.approx(
        max_correlation[i], abs=TOLERANCE)


def test_zero_variance_images_are_reported(fixed_threshold_audit):
  """A constant synthetic image has no correlation: listed, empty rows, not in the fractions."""
  outputs = fixed_threshold_audit["outputs"]
  summary = outputs["summary"]
  assert summary["zero_variance"]["synthetic"] == {"count": 1, "ids": ["syn_const.png"]}
  assert summary["zero_variance"]["train"] == {"count": 1, "ids": ["tr_const.png"]}
  assert summary["synthetic"]["count"] == 5
  assert summary["num_synthetic_with_correlation"] == 4
  assert summary["fraction_memorized"] == pytest.approx(1 / 4)
  grouped = _rows_by_synthetic(outputs["rows"])
  constant_rows = grouped["syn_const.png"]
  assert [int(row["rank"]) for row in constant_rows] == [1, 2]
  for row in constant_rows:
    assert row["train"] == "" and row["correlation"] == "" and row["memorized"] == ""
  # A constant training image is never matched.
  assert all(row["train"] != "tr_const.png" for row in outputs["rows"])
  assert summary["max_correlation_quantiles"]["max"] == pytest.approx(1.0, abs=TOLERANCE)


# ----------------------------------------------------------------------------------------------
# 4. NIfTI volumes cut into slices.


def test_nifti_slices_against_npy_synthetic(tmp_path):
  """Training: two .nii.gz volumes cut along axis 2; synthetic: slices in a .npy file."""
  rng = np.random.default_rng(3)
  volumes = {}
  for name in ("vol_a.nii.gz", "vol_b.nii.gz"):
    volume = np.stack([_smooth_image(rng, (16, 16)) for _ in range(6)], axis=2)
    volumes[name] = volume.astype(np.float32)
    (tmp_path / "train").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(volumes[name], np.eye(4)), tmp_path / "train" / name)
  synthetic = np.stack([volumes["vol_a.nii.gz"][:, :, 4], volumes["vol_b.nii.gz"][:, :, 2],
                        _smooth_image(rng, (16, 16)).astype(np.float32)])
  np.save(tmp_path / "synthetic.npy", synthetic)
  workdir = tmp_path / "run"
  process = _launch(*_audit_args(workdir, tmp_path / "synthetic.npy", tmp_path / "train", None,
                                 "--config.audit.nifti_slice_axis=2", "--config.audit.k=2"))
  _check_success(process)
  outputs = _read_outputs(workdir)
  train_ids = [f"{name}:{s}" for name in sorted(volumes) for s in range(6)]
  train_slices = np.stack([volumes[name][:, :, s] for name in sorted(volumes) for s in range(6)])
  corr = _pearson(synthetic, train_slices)

  assert outputs["summary"]["train"]["count"] == 12
  assert outputs["summary"]["train"]["image_shape"] == [16, 16]
  grouped = _rows_by_synthetic(outputs["rows"])
  assert list(grouped) == ["0", "1", "2"]
  assert grouped["0"][0]["train"] == "vol_a.nii.gz:4"
  assert grouped["1"][0]["train"] == "vol_b.nii.gz:2"
  for i, (name, group) in enumerate(grouped.items()):
    assert len(group) == 2
    for row in group:
      assert row["train"] in train_ids
      assert float(row["correlation"]) == pytest.approx(
          corr[i, train_ids.index(row["train"])], abs=TOLERANCE), name
    np.testing.assert_allclose([float(row["correlation"]) for row in group],
                               np.sort(corr[i])[::-1][:2], atol=TOLERANCE)
  assert grouped["0"][0]["memorized"] == grouped["1"][0]["memorized"] == "true"


# ----------------------------------------------------------------------------------------------
# 5 and 6. Bad input: one line on stderr, exit status 2, no traceback.


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory):
  """A good synthetic and training folder, and the bad inputs that tests pair with them."""
  rng = np.random.default_rng(11)
  root = tmp_path_factory.mktemp("small_folders")
  _save_pngs(root / "synthetic", "syn", [_to_uint8(_smooth_image(rng)) for _ in range(3)])
  _save_pngs(root / "train", "tr", [_to_uint8(_smooth_image(rng)) for _ in range(5)])
  (root / "empty").mkdir()
  _save_pngs(root / "corrupt", "tr", [_to_uint8(_smooth_image(rng)) for _ in range(3)])
  (root / "corrupt" / "broken.png").write_bytes(rng.integers(0, 256, 500, np.uint8).tobytes())
  _save_pngs(root / "small", "syn", [_to_uint8(_smooth_image(rng, (16, 24))) for _ in range(2)])
  # A PNG whose header is intact but whose pixel data is cut: found only when decoded.
  _save_pngs(root / "truncated", "tr", [_to_uint8(_smooth_image(rng)) for _ in range(4)])
  whole = (root / "truncated" / "tr_002.png").read_bytes()
  (root / "truncated" / "tr_002.png").write_bytes(whole[:len(whole) // 2])
  return root


def test_cli_missing_synthetic_path(small_folders, tmp_path):
  missing = small_folders / "does_not_exist"
  process = _launch(*_audit_args(tmp_path / "run", missing, small_folders / "train"))
  _check_user_error(process, missing, "no such file")


def test_cli_corrupt_png_in_training_folder(small_folders, tmp_path):
  process = _launch(*_audit_args(tmp_path / "run", small_folders / "synthetic",
                                 small_folders / "corrupt"))
  _check_user_error(process, small_folders / "corrupt" / "broken.png", "not a readable image")


def test_cli_embedding_detector_needs_a_trained_encoder(small_folders, tmp_path):
  args = _audit_args(tmp_path / "run", small_folders / "synthetic", small_folders / "train")
  process = _launch(*args, "--config.audit.detectors=embedding")
  _check_user_error(process, "needs a trained contrastive encoder", "--config.audit.encoder=")
  missing = tmp_path / "no_encoder"
  process = _launch(*args, "--config.audit.detectors=correlation,embedding",
                    f"--config.audit.encoder={missing}")
  _check_user_error(process, str(missing / "config.json"), "does not exist")


def test_cli_shapes_differ(small_folders, tmp_path):
  process = _launch(*_audit_args(tmp_path / "run", small_folders / "small",
                                 small_folders / "train"))
  _check_user_error(process, small_folders / "small", small_folders / "train", "(16, 24)",
                    "(32, 32)")


def test_cli_truncated_png_found_during_the_search(small_folders, tmp_path):
  """A decode error raised in the search's background reader still gives one line, exit 2.

  The progress bar is switched off: with it, the bar's last state (a line of its own) is left on
  stderr above the error line.
  """
  process = _launch(*_audit_args(tmp_path / "run", small_folders / "synthetic",
                                 small_folders / "truncated", None,
                                 "--config.audit.progress=false", "--config.audit.k=1"))
  _check_user_error(process, small_folders / "truncated" / "tr_002.png", "cannot be decoded")


def test_cli_demo_workflow_needs_the_demo_config(tmp_path):
  process = _launch("--config.workflow=demo", f"--workdir={tmp_path / 'run'}")
  _check_user_error(process, "configs/demo.py")


def test_missing_synthetic_path(small_folders, tmp_path):
  missing = small_folders / "does_not_exist"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    workflows.run(_config(missing, small_folders / "train"), tmp_path)


def test_empty_training_folder(small_folders, tmp_path):
  with pytest.raises(ValueError) as error:
    workflows.run(_config(small_folders / "synthetic", small_folders / "empty"), tmp_path)
  assert str(small_folders / "empty") in str(error.value)
  assert "no image files" in str(error.value)


def test_corrupt_png_in_training_folder(small_folders, tmp_path):
  with pytest.raises(ValueError, match=re.escape(str(small_folders / "corrupt" / "broken.png"))):
    workflows.run(_config(small_folders / "synthetic", small_folders / "corrupt"), tmp_path)


def test_shapes_differ(small_folders, tmp_path):
  with pytest.raises(ValueError) as error:
    workflows.run(_config(small_folders / "small", small_folders / "train"), tmp_path)
  message = str(error.value)
  for fragment in (small_folders / "small", small_folders / "train", "(16, 24)", "(32, 32)"):
    assert str(fragment) in message


def test_holdout_shape_differs(small_folders, tmp_path):
  with pytest.raises(ValueError) as error:
    workflows.run(_config(small_folders / "synthetic", small_folders / "train",
                          small_folders / "small"), tmp_path)
  assert str(small_folders / "small") in str(error.value)
  assert str(small_folders / "train") in str(error.value)


@pytest.mark.parametrize("missing, key", [("synthetic", "synthetic_images"),
                                          ("train", "training_images")])
def test_required_paths(small_folders, tmp_path, missing, key):
  paths = {"synthetic": small_folders / "synthetic", "train": small_folders / "train"}
  paths[missing] = None
  with pytest.raises(ValueError, match=re.escape(f"--config.audit.{key} is required")):
    workflows.run(_config(**paths), tmp_path)


def test_old_input_names_still_work_with_one_warning_each(small_folders, tmp_path):
  process = _launch("--config.synthetic=" + str(small_folders / "synthetic"),
                    "--config.train=" + str(small_folders / "train"),
                    "--config.audit.training_images=" + str(small_folders / "synthetic"),
                    f"--workdir={tmp_path / 'clash'}")
  assert process.returncode == 2 and "Traceback" not in process.stderr
  line = process.stderr.strip().splitlines()[-1]
  assert line.startswith("error: --config.train=") and "disagree" in line
  process = _launch("--config.synthetic=" + str(small_folders / "synthetic"),
                    "--config.train=" + str(small_folders / "train"),
                    "--config.audit.progress=false", f"--workdir={tmp_path / 'old'}")
  _check_success(process)
  warnings = [line for line in process.stderr.splitlines() if "deprecated" in line]
  assert len(warnings) == 2, process.stderr
  assert warnings[0].endswith("--config.synthetic is deprecated: use "
                              "--config.audit.synthetic_images")
  summary = json.loads((tmp_path / "old" / "summary.json").read_text())
  assert summary["train"]["source"].endswith("train")


def test_unknown_workflow(tmp_path):
  config = _config()
  config.workflow = "nope"
  with pytest.raises(ValueError) as error:
    workflows.run(config, tmp_path)
  assert "'nope'" in str(error.value)
  assert "audit" in str(error.value)


def test_demo_workflow_without_models_names_the_demo_config(tmp_path):
  config = _config()
  config.workflow = "demo"
  with pytest.raises(ValueError, match="configs/demo.py"):
    workflows.run(config, tmp_path)


@pytest.mark.parametrize("workflow", ["train", "sample"])
def test_training_workflows_need_a_model(tmp_path, workflow):
  config = _config()  # the audit config names no model
  config.workflow = workflow
  with pytest.raises(ValueError, match="model.name"):
    workflows.run(config, tmp_path)


def test_user_errors_are_ones_launch_reports(small_folders, tmp_path):
  """Every bad input above raises an exception type that launch.py turns into one line."""
  cases = [
      _config(small_folders / "missing", small_folders / "train"),
      _config(small_folders / "synthetic", small_folders / "empty"),
      _config(small_folders / "synthetic", small_folders / "corrupt"),
      _config(small_folders / "small", small_folders / "train"),
      _config(small_folders / "synthetic"),
  ]
  for config in cases:
    with pytest.raises(USER_ERRORS):
      workflows.run(config, tmp_path)


def test_workdir_that_is_a_file(small_folders, tmp_path):
  workdir = tmp_path / "a_file"
  workdir.write_text("not a folder")
  with pytest.raises(USER_ERRORS) as error:
    workflows.run(_config(small_folders / "synthetic", small_folders / "train"), workdir)
  assert str(workdir) in str(error.value)


def test_run_returns_the_summary_it_writes(small_folders, tmp_path):
  """In-process: `workflows.run` writes config.json and returns what summary.json holds."""
  summary = workflows.run(_config(small_folders / "synthetic", small_folders / "train", k=2),
                          tmp_path)
  assert json.loads((_audit_dir(tmp_path) / "summary.json").read_text()) == summary
  assert summary["k"] == 2 and summary["synthetic"]["count"] == 3
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["audit"]["k"] == 2
  assert config["audit"]["synthetic_images"] == str(small_folders / "synthetic")
