"""The detector harness: its planted copies are what their labels say (checked against scipy and
brute force), ROC AUC and the calibrated rates against direct counts, and the tool end to end."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage

from memjax.memorization import validation

REPO = pathlib.Path(__file__).resolve().parents[1]


def brain_like(rng, count, size=24):
  """uint8 images of smooth random blobs on a zero background (no two alike)."""
  noise = rng.standard_normal((count, size, size))
  smooth = np.stack([scipy.ndimage.gaussian_filter(n, 2.0) for n in noise])
  rows, columns = np.indices((size, size))
  disc = (rows - size / 2 + 0.5)**2 + (columns - size / 2 + 0.5)**2 < (size / 2 - 4)**2
  images = np.where(disc, 128 + 600 * smooth, 0)
  return np.clip(images, 0, 255).astype(np.uint8)[..., None]


@pytest.fixture(scope="module")
def planted():
  rng = np.random.default_rng(0)
  train, novel = brain_like(rng, 12), brain_like(rng, 9)
  neighbors = train[:3] // 2 + brain_like(rng, 3) // 2
  return train, novel, validation.plant_copies(
      train, novel, copies_per_kind=15, neighbors=neighbors, neighbor_sources=[0, 1, 2],
      train_indices=np.arange(100, 112), seed=3)


def test_planted_labels_say_what_each_image_is(planted):
  train, novel, result = planted
  kinds = result.kinds
  assert [int(np.sum(kinds == k)) for k in validation.COPY_KINDS] == [15] * 7
  assert np.sum(kinds == "neighbor") == 3 and np.sum(kinds == "novel") == 9
  assert result.images.dtype == np.uint8 and result.images.shape[1:] == train.shape[1:]
  assert result.is_copy.sum() == 105
  source = {i: train[s - 100] for i, s in enumerate(result.sources) if s >= 100}
  for i in np.flatnonzero(kinds == "exact"):
    np.testing.assert_array_equal(result.images[i], source[i])
  for i in np.flatnonzero(kinds == "flipped"):
    np.testing.assert_array_equal(result.images[i], source[i][:, ::-1])
  for i in np.flatnonzero(kinds == "scaled"):
    factor = result.parameters[i]
    assert 0.6 <= factor <= 0.9
    assert np.abs(result.images[i].astype(float) - factor * source[i]).max() <= 0.5
  for i in np.flatnonzero(kinds == "noisy"):
    residual = result.images[i].astype(float) - source[i]
    sigma = result.parameters[i]
    assert 0.03 * 255 * 0.5 <= sigma <= 0.08 * 255 and abs(residual.std() / sigma - 1) < 0.3
  for i in np.flatnonzero(kinds == "shifted"):
    # Exactly one integer offset within 8 pixels reproduces the copy, its larger part 2-8.
    matches = [(dy, dx) for dy in range(-8, 9) for dx in range(-8, 9)
               if np.array_equal(result.images[i],
                                 scipy.ndimage.shift(source[i], (dy, dx, 0), order=0, cval=0))]
    assert len(matches) == 1 and max(map(abs, matches[0])) == result.parameters[i]
    assert 2 <= result.parameters[i] <= 8
  for i in np.flatnonzero(kinds == "rotated"):
    degrees = result.parameters[i]
    assert 3 <= abs(degrees) <= 10
    # scipy's rotate turns the other way in (row, column) coordinates.
    want = scipy.ndimage.rotate(source[i][..., 0].astype(float), -degrees, reshape=False,
                                order=1, mode="grid-constant", cval=0.0)
    assert np.abs(result.images[i][..., 0] - want).max() <= 1.0
  for i in np.flatnonzero(kinds == "cropped"):
    assert 0.8 <= result.parameters[i] <= 0.9
    assert not np.array_equal(result.images[i], source[i])
  np.testing.assert_array_equal(result.images[kinds == "novel"], novel)
  assert np.all(result.sources[kinds == "novel"] == -1)
  np.testing.assert_array_equal(result.sources[kinds == "neighbor"], [0, 1, 2])
  again = validation.plant_copies(train, novel, copies_per_kind=15, seed=3)
  np.testing.assert_array_equal(again.images[:105], result.images[:105])  # one seed, one set


def test_crop_and_resize_keeps_the_crops_content():
  image = np.zeros((20, 20), float)
  image[5:15, 5:15] = np.arange(100).reshape(10, 10)
  crop = validation.crop_and_resize(image, 0.5, (5.0, 5.0), (0, 1))
  # The 10x10 crop at (5, 5) scaled 2x: every 2x2 output block averages about one input pixel.
  want = scipy.ndimage.zoom(image[5:15, 5:15], 2.0, order=1, mode="nearest", grid_mode=True)
  assert np.abs(crop - want)[2:-2, 2:-2].max() < 1e-9


def test_roc_auc_counts_pairs():
  rng = np.random.default_rng(1)
  positive = rng.integers(0, 5, 23).astype(float)
  negative = rng.integers(0, 5, 17).astype(float)
  pairs = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
  assert validation.roc_auc(positive, negative) == pytest.approx(pairs.mean())
  assert validation.roc_auc(np.array([np.nan]), np.array([0.0])) == 0.0


def test_evaluate_calibrates_and_counts(planted):
  _, _, result = planted
  rng = np.random.default_rng(2)
  scores = rng.random(len(result))
  calibration = rng.random(40)
  got = validation.evaluate("x", result, scores, calibration=calibration, percentile=90.0)
  threshold = np.percentile(calibration, 90.0)
  assert got.threshold == threshold
  for kind in ("exact", "novel", "neighbor"):
    assert got.rates[kind] == np.mean(scores[result.kinds == kind] >= threshold)
  distances = validation.evaluate("d", result, scores, calibration=calibration, percentile=90.0,
                                  lower_is_copy=True)
  assert distances.threshold == np.percentile(calibration, 10.0)
  assert distances.false_positive_rate == np.mean(
      scores[result.kinds == "novel"] <= distances.threshold)
  assert distances.auc == pytest.approx(1.0 - got.auc)
  # The operating point: the loosest threshold that flags at most 5% of the novel images (0 of 9).
  novel = scores[result.kinds == "novel"]
  assert got.operating_threshold == novel.max()
  assert got.operating_rates["novel"] == 0.0
  assert got.operating_rates["exact"] == np.mean(scores[result.kinds == "exact"] > novel.max())
  assert distances.operating_threshold == novel.min()
  table = validation.format_table([got, distances])
  assert "exact" in table.splitlines()[0] and len(table.splitlines()) == 3
  assert got.num_novel == 9
  low, high = got.false_positive_interval
  assert f"{100 * low:.0f}-{100 * high:.0f}%" in table.splitlines()[1]
  assert low <= got.false_positive_rate <= high


def test_wilson_interval_matches_its_closed_form_and_known_values():
  # Wilson (1927): the roots p of (p_hat - p)^2 = z^2 p (1 - p) / n, solved here in float64.
  z, n = 1.959964, 48
  for k in (0, 4, 24, 48):
    p_hat = k / n
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    roots = np.sort(np.roots([a, b, c]).real)
    low, high = validation.wilson_interval(k, n)
    np.testing.assert_allclose([low, high], np.clip(roots, 0, 1), atol=1e-9)
  low, high = validation.wilson_interval(4, 48)  # 8.3%: 3.3% to 19.6%
  assert (round(100 * low, 1), round(100 * high, 1)) == (3.3, 19.6)
  assert all(np.isnan(validation.wilson_interval(0, 0)))
  assert all(np.isnan(validation.rate_interval(float("nan"), 0)))  # no novel images planted
  assert validation.rate_interval(4 / 48, 48) == validation.wilson_interval(4, 48)


def test_tool_prints_and_saves_the_table(tmp_path):
  """The tool on pixel detectors alone (no encoder): its correlation row against a direct count."""
  rng = np.random.default_rng(4)
  train, holdout = brain_like(rng, 16), brain_like(rng, 22)
  np.save(tmp_path / "train.npy", train)
  np.save(tmp_path / "holdout.npy", holdout)
  out = subprocess.run(
      [sys.executable, str(REPO / "tools" / "validate_detectors.py"), "--skip_embedding",
       f"--train={tmp_path / 'train.npy'}", f"--holdout={tmp_path / 'holdout.npy'}",
       f"--workdir={tmp_path / 'work'}", "--copies_per_kind=16"],
      capture_output=True, text=True, cwd=REPO, check=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4"))
  assert "correlation (pixels)" in out.stdout and "C_T" in out.stdout
  saved = json.loads((tmp_path / "work" / "validation.json").read_text())
  kinds = np.array(saved["planted"]["kinds"])
  assert (kinds == "novel").sum() == 22 and (kinds == "exact").sum() == 16
  row = next(e for e in saved["evaluations"] if e["name"] == "correlation (pixels)")

  def max_correlation(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return np.corrcoef(a, b)[:len(a), len(a):].max(axis=1)

  threshold = np.percentile(max_correlation(train, holdout), 95.0)
  assert row["threshold"] == pytest.approx(threshold, abs=1e-5)
  novel = max_correlation(holdout, train)
  assert row["rates"]["novel"] == pytest.approx(np.mean(novel >= threshold))
  assert row["rates"]["exact"] == 1.0 and row["rates"]["flipped"] < 0.5
