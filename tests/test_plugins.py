"""Detectors as plug-ins: the registry, and the "transformed" detector run by the audit against an
exhaustive float64 search, calibrated as Dar et al. calibrate, on 1 and 4 devices."""

import json
import logging

import jax
import numpy as np
import pytest

from memjax import parallel
from memjax.memorization import audit
from memjax.memorization import plugins
from memjax.memorization import result as result_lib
from memjax.memorization import transformed
from test_transformed import exhaustive
from test_transformed import smooth


def test_the_registry_names_parses_and_refuses():
  assert set(plugins.names()) == {"correlation", "embedding", "transformed"}
  assert plugins.parse("correlation,transformed") == ("correlation", "transformed")
  assert plugins.parse(" transformed , correlation ") == ("transformed", "correlation")
  assert plugins.parse(["embedding"]) == ("embedding",)
  assert plugins.parse("both") == ("correlation", "embedding")  # the old setting
  with pytest.raises(ValueError, match="unknown detector 'pixels'.*correlation, embedding"):
    plugins.parse("correlation,pixels")
  with pytest.raises(ValueError, match="twice"):
    plugins.parse("transformed,transformed")
  with pytest.raises(ValueError, match="names no detector"):
    plugins.parse(" , ")
  for name in plugins.names():  # every detector brings the words every page needs
    words = plugins.get(name).words
    assert {"name", "histogram_title", "axis", "header", "symbol", "file_suffix", "explanation",
            "limits"} <= set(words)
  assert [plugins.get(n).needs_encoder for n in plugins.names()] == [False, True, False]


def test_config_takes_a_list_and_the_old_setting_with_a_warning(caplog):
  options = audit.AuditOptions.from_config({"detectors": "correlation,transformed",
                                            "max_shift": 3})
  assert options.detector_names == ("correlation", "transformed") and options.max_shift == 3
  with caplog.at_level(logging.WARNING):
    old = audit.AuditOptions.from_config({"detectors": "correlation", "detector": "both"})
  assert old.detector_names == ("correlation", "embedding")
  assert "config.audit.detector is deprecated: use --config.audit.detectors=correlation," \
         "embedding" in caplog.text
  with pytest.raises(ValueError, match="max_shift must be an integer of at least 0"):
    audit.AuditOptions(max_shift=-1).check(has_holdout=False)
  with pytest.raises(ValueError, match="needs a trained contrastive encoder"):
    audit.check_detector("transformed,embedding", None)
  audit.check_detector("transformed,correlation", None)


def planted_set(rng, side=16):
  train = smooth(rng, 10, (side, side))
  holdout = smooth(rng, 10, (side, side))
  synthetic = np.stack([
      train[3],  # an exact copy
      np.flip(train[5], axis=0),  # flipped up-down
      np.rot90(train[7]),  # turned by 90 degrees
      np.roll(train[2], (2, -1), axis=(0, 1)),  # shifted (wrapped at the border)
      *smooth(rng, 3, (side, side))])  # novel
  return synthetic, train, holdout


@pytest.mark.parametrize("num_devices", [1, 4])
def test_the_transformed_detector_in_an_audit_is_the_exhaustive_float64_search(
    tmp_path, rng, num_devices):
  synthetic, train, holdout = planted_set(rng)
  mesh = parallel.data_mesh(jax.devices()[:num_devices])
  summary = audit.run_audit(tmp_path, synthetic=synthetic, train=train, holdout=holdout,
                            detectors=("correlation", "transformed"), max_shift=2, k=2,
                            progress=False, mesh=mesh)
  found = {r.measure: r for r in summary.results}["transformed"]
  want, want_index = exhaustive(synthetic, train, 2)
  assert np.max(np.abs(found.values[:, 0] - want)) <= 1e-9
  np.testing.assert_array_equal(found.indices[:, 0], want_index)
  assert np.isnan(found.values[:, 1]).all() and (found.indices[:, 1] == -1).all()  # k=2: best only
  # Calibrated by Dar et al.'s rule on the same scores of training against held-out images.
  calibration, _ = exhaustive(train, holdout, 2)
  np.testing.assert_allclose(found.holdout_max_correlation, calibration, atol=1e-9)
  assert found.threshold == pytest.approx(np.percentile(calibration, 95.0), abs=1e-9)
  # Every planted copy is found at its training image, the flipped and turned ones exactly, where
  # the aligned search sees them as different images.
  assert found.memorized[:4].all() and found.indices[:4, 0].tolist() == [3, 5, 7, 2]
  assert found.values[:3, 0].tolist() == [1.0, 1.0, 1.0]
  pixels = {r.measure: r for r in summary.results}["correlation"]
  assert pixels.max_correlation[0] == 1.0 and (pixels.max_correlation[1:3] < 0.999).all()
  # The files: summary, matches.csv columns, correlations.npz read back with the transforms.
  written = json.loads((tmp_path / "summary.json").read_text())
  assert written["detector"] == "correlation,transformed"
  assert written["detectors"]["transformed"]["num_memorized"] == int(found.memorized.sum())
  assert written["agreement"]["memorized_by_transformed_only"] == int(
      np.sum(found.memorized & ~pixels.memorized))
  header = (tmp_path / "matches.csv").read_text().splitlines()[0].split(",")
  assert header[-3:] == ["transformed_train", "transformed_correlation", "transformed_memorized"]
  back = {r.measure: r for r in result_lib.read_results(tmp_path)}["transformed"]
  np.testing.assert_array_equal(back.details["symmetry"], found.details["symmetry"])
  np.testing.assert_array_equal(back.details["shift"], found.details["shift"])
  for name in ("histogram_transformed.png", "pairs_transformed.png", "agreement.png"):
    assert (tmp_path / name).stat().st_size > 1000
  page = (tmp_path / "report.html").read_text()
  assert "Detector 2: transform-tolerant correlation" in page
  assert "training match, moved into the synthetic image&#39;s frame (synthetic flipped up-down)" \
      in page or "moved into the synthetic image's frame (synthetic flipped up-down)" in page


def test_a_match_moved_into_the_synthetic_frame_lies_on_the_synthetic_pixels(rng):
  """What the page draws: the training image under the inverse transform equals the synthetic
  image wherever the two overlap."""
  train = smooth(rng, 4, (16, 16))
  synthetic = np.stack([np.flip(np.roll(train[1], (3, -2), axis=(0, 1)), axis=1),
                        np.rot90(train[2], k=3)])
  match = transformed.best_transformed_match(synthetic, train, max_shift=3)
  group = transformed.symmetries((16, 16))
  for i in range(2):
    moved = transformed.into_synthetic_frame(train[match.indices[i]],
                                             match.symmetries[i], match.shifts[i])
    overlap = np.isfinite(moved)
    assert overlap.mean() > 0.6
    # A shift that wrapped pixels around: they are not the training image's, so compare where
    # the synthetic image came from the training image unwrapped (all of it for the turned copy).
    close = np.isclose(moved[overlap], synthetic[i][overlap], rtol=0, atol=1e-12)
    assert close.mean() > (0.8 if i == 0 else 0.999)
    assert match.symmetries[i] in group
  assert match.values[1] == 1.0 and match.describe(1) == "turned 90° anticlockwise"


def test_each_symmetry_is_named_as_it_turns_or_flips_and_inverts():
  x = np.arange(20.0).reshape(4, 5)[:, :4]
  named = {"as is": x, "flipped up-down": x[::-1], "flipped left-right": x[:, ::-1],
           "turned 180°": np.rot90(x, 2), "turned 90° anticlockwise": np.rot90(x, 1),
           "turned 90° clockwise": np.rot90(x, -1), "mirrored about the main diagonal": x.T,
           "mirrored about the anti-diagonal": np.rot90(x, 2).T}
  group = transformed.symmetries((4, 4))
  assert sorted(s.describe() for s in group) == sorted(named)
  for symmetry in group:
    np.testing.assert_array_equal(symmetry.apply(x), named[symmetry.describe()])
    np.testing.assert_array_equal(symmetry.invert(symmetry.apply(x)), x)
  assert len(transformed.symmetries((4, 6))) == 4 and len(transformed.symmetries((3, 4, 5))) == 8
