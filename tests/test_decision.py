"""The decision first: false positives expected by chance, the threshold's interval, calibration
warnings, the verdict's rule, provenance and pseudonyms, against closed forms and planted sets."""

import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image

from memjax.data import mni152
from memjax.memorization import audit
from memjax.memorization import decision
from memjax.memorization import provenance
from memjax.memorization.result import AuditResult


def wilson(successes, trials, z=1.959964):
  """Wilson's interval, written out independently of memjax's."""
  p = successes / trials
  centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
  return centre - half, centre + half


def result(best, threshold, holdout_max=None, kind="holdout_percentile"):
  best = np.asarray(best, np.float64)
  return AuditResult("correlation", best[:, None], np.zeros((best.size, 1), np.int64),
                     threshold, "rule", kind, holdout_max_correlation=holdout_max)


def test_false_positives_expected_by_chance_are_the_held_out_rate_with_wilsons_interval():
  holdout_max = np.r_[np.linspace(0.2, 0.8, 95), np.linspace(0.9, 0.95, 5), np.nan]
  chance = decision.by_chance(holdout_max, 0.9, num_defined=200)
  low, high = wilson(5, 100)
  assert chance.rate == 0.05 and chance.num_values == 100
  assert chance.expected == pytest.approx(10.0)
  assert (chance.low, chance.high) == pytest.approx((200 * low, 200 * high), rel=1e-9)
  assert decision.by_chance(None, 0.9, 10) is None


def test_the_thresholds_bootstrap_interval_has_the_width_of_a_quantiles_standard_error():
  values = np.random.default_rng(3).standard_normal(4000)
  low, high = decision.threshold_interval(values, 95.0, samples=2000)
  estimate = np.percentile(values, 95.0)
  assert low < estimate < high
  # Asymptotic standard error of the 95th percentile of N(0, 1): sqrt(p (1 - p) / n) / phi(q).
  q = 1.6448536
  se = math.sqrt(0.05 * 0.95 / 4000) / (math.exp(-q * q / 2) / math.sqrt(2 * math.pi))
  assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.25)
  assert decision.threshold_interval(values, 95.0, samples=2000) == (low, high)  # seeded


def test_the_verdict_follows_its_rule():
  holdout_max = np.linspace(0.5, 0.9, 100)  # 5 of 100 at or above 0.88
  threshold = float(np.percentile(holdout_max, 95.0))
  novel = np.linspace(0.4, threshold - 0.01, 60)
  clean, warnings = decision.decide([result(novel, threshold, holdout_max)])
  assert clean["verdict"] == decision.NO_EVIDENCE and warnings == []
  within = np.r_[novel[:57], [threshold + 0.01] * 3]  # 3 flagged, within chance (about 3)
  assert decision.decide([result(within, threshold, holdout_max)])[0]["verdict"] == \
      decision.NO_EVIDENCE
  many = np.r_[novel[:40], [threshold + 0.01] * 20]  # far more than chance
  found = decision.decide([result(many, threshold, holdout_max)])[0]
  assert found["verdict"] == decision.REVIEW and "more are flagged than chance explains" in \
      found["reasons"][0]
  copy = np.r_[novel[:59], [1.0]]
  found = decision.decide([result(copy, threshold, holdout_max)])[0]
  assert found["verdict"] == decision.DO_NOT_RELEASE
  assert found["reasons"][0] == ("1 synthetic image is a copy of a training image by pixel "
                                 "correlation (r ≥ 0.9999)")
  fixed = decision.decide([result(copy[:-1].tolist() + [0.97], 0.95, kind="fixed")])[0]
  assert fixed["verdict"] == decision.REVIEW and "unknown" in fixed["reasons"][0]
  assert fixed["detectors"]["correlation"]["threshold_interval"] is None


def mni_slices(count=80):
  volume = mni152.template_volumes()
  images = np.stack([image for _, image in mni152.slices(volume, 64)])[..., 0]
  return images[:count].astype(np.float32)


def test_the_warning_fires_when_held_out_slices_are_the_training_subjects_neighbours(tmp_path):
  """MNI152: one brain, held-out slices 1 mm from training slices; the threshold is near 1, the
  warning says so and names what it lets through; the verdict is not 'no evidence'."""
  slices = mni_slices()
  train, holdout = slices[0::2], slices[1::2]
  noisy = train[5] + np.random.default_rng(0).normal(0, 0.02 * train[5].std(), train[5].shape)
  summary = audit.run_audit(tmp_path, synthetic=np.stack([noisy, holdout[3]]), train=train,
                            holdout=holdout, progress=False)
  assert summary["warnings"] and "within 0.01 of 1" in summary["warnings"][0]
  assert "are then not flagged" in summary["warnings"][0]
  written = json.loads((tmp_path / "summary.json").read_text())
  assert written["warnings"] == summary["warnings"]
  page = (tmp_path / "report.html").read_text()
  # The decision, then the warning, then the counts, all before any figure.
  assert (page.index('id="decision"') < page.index("Check the calibration")
          < page.index('class="verdict"') < page.index("<img"))


def test_provenance_ties_the_summary_to_the_bytes_of_each_set(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "train"
  folder.mkdir()
  images = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"case_{i}.png")
  synthetic = images[:2].astype(np.float32)
  summary = audit.run_audit(tmp_path / "out", synthetic=synthetic, train=str(folder), k=1,
                            progress=False, copy_level=0.999)
  record = summary["provenance"]
  # The folder: its file list and bytes, computed here independently.
  digest = hashlib.sha256()
  names = sorted(p.name for p in folder.iterdir())
  for name in names:
    digest.update(name.encode() + b"\0")
  for name in names:
    digest.update((folder / name).read_bytes())
  assert record["inputs"]["train"] == {"sha256": digest.hexdigest(), "of": "files", "count": 4}
  assert record["inputs"]["synthetic"]["of"] == "array"
  assert record["settings"]["copy_level"] == 0.999 and record["memjax_version"]
  assert "holdout" not in record["inputs"]
  # One changed pixel changes the fingerprint.
  images[3, 0, 0] ^= 1
  Image.fromarray(images[3]).save(folder / "case_3.png")
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  assert provenance.fingerprint(sources.open_source(str(folder)))["sha256"] != digest.hexdigest()


def test_a_holdout_set_too_small_to_calibrate_is_refused_unless_allowed(tmp_path, rng):
  train = rng.random((20, 8, 8), dtype=np.float32)
  synthetic = train[:3].copy()
  with pytest.raises(ValueError, match=r"holds 1 image: a calibrated threshold needs at least 10"
                                       r".*--config.audit.min_holdout_images=N"):
    audit.run_audit(tmp_path, synthetic=synthetic, train=train, holdout=train[:1] + 0.5,
                    progress=False)
  assert not (tmp_path / "summary.json").exists()
  allowed = audit.run_audit(tmp_path, synthetic=synthetic, train=train,
                            holdout=rng.random((2, 8, 8), dtype=np.float32), progress=False,
                            min_holdout_images=2)
  assert allowed["holdout"]["count"] == 2


def test_nothing_compared_is_said_and_is_not_a_clean_exit(tmp_path):
  """Constant synthetic images: no correlation is defined; the verdict says so, and the command
  exits 3, not 0."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  np.save(tmp_path / "synthetic.npy", np.full((3, 8, 8), 7.0, np.float32))
  np.save(tmp_path / "train.npy", np.random.default_rng(0).random((5, 8, 8), dtype=np.float32))
  summary = audit.run_audit(tmp_path / "lib", synthetic=str(tmp_path / "synthetic.npy"),
                            train=str(tmp_path / "train.npy"), progress=False)
  assert summary["decision"]["verdict"] == decision.NO_CORRELATION
  assert summary["decision"]["reasons"][0].startswith("none of the 3 synthetic images has a "
                                                      "defined correlation")
  process = subprocess.run(
      [sys.executable, "-m", "memjax", "--config=audit", f"--workdir={tmp_path / 'cli'}",
       f"--config.audit.synthetic_images={tmp_path / 'synthetic.npy'}",
       f"--config.audit.training_images={tmp_path / 'train.npy'}",
       "--config.audit.progress=false"], capture_output=True, text=True, timeout=300, check=False)
  assert process.returncode == 3, process.stderr
  assert process.stderr.strip().splitlines()[-1].startswith("error: none of the 3 synthetic")
  assert (tmp_path / "cli" / "summary.json").exists()


def test_an_encoder_without_the_embedding_detector_is_an_error(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  np.save(tmp_path / "images.npy", np.random.default_rng(0).random((4, 8, 8), dtype=np.float32))
  process = subprocess.run(
      [sys.executable, "-m", "memjax", "--config=audit", f"--workdir={tmp_path / 'out'}",
       f"--config.audit.synthetic_images={tmp_path / 'images.npy'}",
       f"--config.audit.training_images={tmp_path / 'images.npy'}",
       f"--config.audit.encoder={tmp_path}"], capture_output=True, text=True, timeout=300,
      check=False)
  assert process.returncode == 2
  assert process.stderr.strip().splitlines() == [
      f"error: --config.audit.encoder={tmp_path} is given but no detector uses it "
      "(--config.audit.detectors=correlation): add embedding to the detectors, or leave the "
      "encoder out"]
  assert not (tmp_path / "out" / "summary.json").exists()
