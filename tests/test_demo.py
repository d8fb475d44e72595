"""The main job end to end, with tiny models: summary.json, a self-contained report, redaction.

The demo trains a DDPM and StyleGAN2 on the MNI152 slices (prepared into a temporary data
directory), samples, audits and writes the comparison page; with tiny models and few samples it
runs in about a minute here. The redacted page is checked the way a privacy officer would want:
no image decoded from it resembles any training slice, while the same check finds training
slices on the unredacted page.
"""

import base64
import io
import json
import re

import numpy as np
from PIL import Image
import pytest

from configs import demo as demo_config
from memjax import workflows
from memjax.data import sources

MODELS = ("ddpm", "stylegan2")
FIGURE_KEYS = ("fraction_memorized", "threshold", "median_max_correlation",
               "fraction_above_0.90", "fraction_above_0.95", "fraction_above_0.99",
               "num_samples", "num_training_images", "training_steps", "training_seconds")


def tiny_config(redact: bool = False):
  config = demo_config.get_config()
  config.audit.progress = False
  config.audit.redact_training_images = redact
  config.report_pairs = 2
  for name in MODELS:
    options = config[name]
    options.progress = False
    options.num_devices = 1
    options.data.downsample = 4  # 16x16.
    options.data.num_threads = 1
    options.num_samples = 8
    options.sample_batch_size = 8
    options.sample_every_steps = 0
    options.async_checkpoints = False
  ddpm = config.ddpm
  ddpm.model.model_channels = 16
  ddpm.model.channel_mult = (1,)
  ddpm.model.num_res_blocks = 1
  ddpm.model.attention_resolutions = ()
  ddpm.model.num_head_channels = -1
  ddpm.sample.num_steps = 2
  ddpm.num_train_steps = 2
  stylegan2 = config.stylegan2
  stylegan2.model.z_dim = stylegan2.model.w_dim = 16
  stylegan2.model.map_layers = 2
  stylegan2.model.channel_base = 64
  stylegan2.model.channel_max = 16
  stylegan2.batch_size = 8
  stylegan2.num_train_steps = 1  # One step variant (both regularizers) to compile.
  return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """The demo's workdir after a plain run and a redacted re-run (which reuses the models)."""
  monkeypatch = pytest.MonkeyPatch()
  monkeypatch.setenv("MEMJAX_DATA_DIR", str(tmp_path_factory.mktemp("data")))
  workdir = tmp_path_factory.mktemp("demo")
  try:
    plain = workflows.run(tiny_config(), workdir / "plain")
    plain_page = (workdir / "plain" / "report.html").read_text()
    timing = (workdir / "plain" / "ddpm" / "demo_timing.json").read_text()
    redacted = workflows.run(tiny_config(redact=True), workdir / "plain")
    train = sources.open_source("tfds:mni152/64:train")
    planes = train.read(0, len(train))[..., 0].astype(np.float64)
  finally:
    monkeypatch.undo()
  return {"workdir": workdir / "plain", "plain": plain, "plain_page": plain_page,
          "timing": timing, "redacted": redacted, "planes": planes}


def embedded_images(page: str) -> list[np.ndarray]:
  """Every image the page shows, decoded; fails if any is not an embedded PNG."""
  sources_ = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
  assert sources_
  images = []
  for src in sources_:
    assert src.startswith("data:image/png;base64,"), src[:60]
    data = base64.b64decode(src.split(",", 1)[1])
    images.append(np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float64))
  return images


def best_training_correlation(image: np.ndarray, planes: np.ndarray) -> float:
  """The image (resized to a slice's size) against every training slice: the highest |r|."""
  h, w = planes.shape[1:]
  if image.shape != (h, w):
    image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((w, h), Image.BILINEAR),
                       np.float64)
  x = image.ravel() - image.mean()
  if not np.any(x):
    return 0.0
  y = planes.reshape(len(planes), -1)
  y = y - y.mean(axis=1, keepdims=True)
  r = (y @ x) / (np.linalg.norm(y, axis=1) * np.linalg.norm(x) + 1e-12)
  return float(np.max(np.abs(r)))


def test_summary_holds_every_figure_of_both_models(demo_run):
  summary = json.loads((demo_run["workdir"] / "summary.json").read_text())
  assert set(summary["models"]) == set(MODELS)
  for name, steps in (("ddpm", 2), ("stylegan2", 1)):
    figures = summary["models"][name]
    assert set(FIGURE_KEYS) <= set(figures)
    assert figures["num_samples"] == 8 and figures["num_training_images"] == 48
    assert figures["training_steps"] == steps and figures["training_seconds"] > 0
    # The figures agree with the audit's arrays, recomputed here.
    with np.load(demo_run["workdir"] / "audit" / name / "correlations.npz") as stored:
      best = stored["values"][:, 0].astype(np.float64)
      threshold = float(stored["threshold"])
    assert figures["threshold"] == pytest.approx(threshold)
    assert 0.9 < threshold < 1.0  # Dar et al.'s rule on neighbouring slices: high.
    assert figures["fraction_memorized"] == pytest.approx(np.mean(best >= threshold))
    assert figures["median_max_correlation"] == pytest.approx(np.median(best), abs=1e-6)
    assert figures["fraction_above_0.90"] == pytest.approx(np.mean(best >= 0.90))


def test_report_is_self_contained_and_shows_training_slices(demo_run):
  page = demo_run["plain_page"]
  assert "<link" not in page and "http://" not in page.split("<pre>")[0]
  images = embedded_images(page)
  # The histogram, per model 2 pairs x (prev, match, synthetic, next, scatter), 2 sample grids.
  assert len(images) >= 1 + 2 * 2 * 4 + 2
  # The training matches are shown pixel for pixel: the check the redacted page must pass.
  assert max(best_training_correlation(image, demo_run["planes"]) for image in images) > 0.99
  for name in MODELS:
    assert f"{name}: the closest pairs" in page


def test_redacted_report_holds_no_training_pixels_and_reuses_the_models(demo_run):
  page = (demo_run["workdir"] / "report.html").read_text()
  assert "Redacted: no training pixels" in page
  for image in embedded_images(page):
    assert best_training_correlation(image, demo_run["planes"]) < 0.9
  # The re-run reused the trained models (their timing was not touched) and re-audited.
  assert (demo_run["workdir"] / "ddpm" / "demo_timing.json").read_text() == demo_run["timing"]
  audit_inputs = json.loads((demo_run["workdir"] / "audit" / "ddpm" / "inputs.json").read_text())
  assert audit_inputs["redact_training_images"] is True
  assert demo_run["redacted"]["redacted"] is True
