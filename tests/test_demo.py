"""The main job end to end, with tiny models: the sweep over training-set sizes, summary.json, a
self-contained report, the audited subset, redaction.

The sweep runs the demo at 4 and 8 training slices of MNI152 (prepared into a temporary data
directory): each run trains a DDPM and StyleGAN2 on its seeded subset, samples, audits and writes
its comparison page; the sweep collects the figures into one curve. The 8-slice run is the demo
that the other tests read. Its audit must compare samples with exactly the trained subset, at the
models' resolution. The redacted page is checked the way a privacy officer would want: no image
decoded from it resembles any training slice, while the same check finds training slices on the
unredacted page.
"""

import base64
import html
import io
import json
import re

import numpy as np
from PIL import Image
import pytest

from configs import demo as demo_config
from configs import demo_sweep as demo_sweep_config
from memjax import demo as demo_lib
from memjax import demo_sweep
from memjax import workflows
from memjax.data import sources
from memjax.memorization.report import comparison_page
from memjax.memorization.report import figures as figures_lib
from memjax.memorization.report import sweep_page

MODELS = ("ddpm", "stylegan2")
FIGURE_KEYS = ("fraction_memorized", "threshold", "median_max_correlation",
               "fraction_above_0.90", "fraction_above_0.95", "fraction_above_0.99",
               "num_samples", "num_training_images", "training_steps", "images_seen",
               "training_seconds")
SIZES = (4, 8)
DEMO_SIZE = 8
FACTOR = 4  # The tiny models train on means of 4x4 pixel blocks: 16x16.


def tiny_config(redact: bool = False):
  config = demo_config.get_config()
  config.data.num_images = DEMO_SIZE  # Both models' (one reference).
  config.audit.progress = False
  config.audit.redact_training_images = redact
  config.report_pairs = 2
  for name in MODELS:
    options = config[name]
    options.progress = False
    options.num_devices = 1
    options.data.downsample = FACTOR
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


def block_means(images: np.ndarray, factor: int = FACTOR) -> np.ndarray:
  """float64 means of factor x factor blocks of (N, H, W, C) images: the reference."""
  n, h, w, c = images.shape
  return images.astype(np.float64).reshape(n, h // factor, factor, w // factor, factor,
                                           c).mean(axis=(2, 4))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """The sweep's work dir, and its 8-slice demo after a plain run and a redacted re-run (which
  reuses the models)."""
  monkeypatch = pytest.MonkeyPatch()
  monkeypatch.setenv("MEMJAX_DATA_DIR", str(tmp_path_factory.mktemp("data")))
  workdir = tmp_path_factory.mktemp("demo")
  try:
    config = tiny_config()
    config.sizes = SIZES
    sweep = workflows.run(config, workdir)
    demo_dir = workdir / f"n{DEMO_SIZE}"
    plain = json.loads((demo_dir / "summary.json").read_text())
    plain_page = (demo_dir / "report.html").read_text()
    timing = (demo_dir / "ddpm" / "demo_timing.json").read_text()
    redacted = workflows.run(tiny_config(redact=True), demo_dir)
    train = sources.open_source("tfds:mni152/64:train")
    everything = train.read(0, len(train), dtype=None)
    subset = sources.open("tfds:mni152/64:train", num_images=DEMO_SIZE, seed=0)
    trained = subset.read(0, len(subset), dtype=None)
  finally:
    monkeypatch.undo()
  return {"sweep_dir": workdir, "sweep": sweep, "workdir": demo_dir, "plain": plain,
          "plain_page": plain_page, "timing": timing, "redacted": redacted,
          "planes": everything[..., 0].astype(np.float64),
          "small_planes": block_means(everything)[..., 0], "subset": subset, "trained": trained}


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


def pearson_max(samples: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """float64 reference: each sample's highest Pearson correlation with the training images."""
  x = samples.reshape(len(samples), -1).astype(np.float64)
  y = train.reshape(len(train), -1).astype(np.float64)
  x = x - x.mean(axis=1, keepdims=True)
  y = y - y.mean(axis=1, keepdims=True)
  r = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1,
                                                                          keepdims=True)).T
  return r.max(axis=1), r.argmax(axis=1)


def median_pairwise(images: np.ndarray) -> float:
  """float64 reference: the median correlation between two different images."""
  x = images.reshape(len(images), -1).astype(np.float64)
  x = x - x.mean(axis=1, keepdims=True)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  return float(np.median([x[i] @ x[j] for i in range(len(x)) for j in range(i + 1, len(x))]))


def test_summary_holds_every_figure_of_both_models(demo_run):
  summary = json.loads((demo_run["workdir"] / "summary.json").read_text())
  assert set(summary["models"]) == set(MODELS)
  for name, steps, batch in (("ddpm", 2, 16), ("stylegan2", 1, 8)):
    figures = summary["models"][name]
    assert set(FIGURE_KEYS) <= set(figures)
    assert figures["num_samples"] == 8 and figures["num_training_images"] == DEMO_SIZE
    assert figures["training_steps"] == steps and figures["training_seconds"] > 0
    assert figures["images_seen"] == steps * batch
    # The figures agree with the audit's arrays, recomputed here.
    with np.load(demo_run["workdir"] / "audit" / name / "correlations.npz") as stored:
      best = stored["values"][:, 0].astype(np.float64)
      threshold = float(stored["threshold"])
    assert figures["threshold"] == pytest.approx(threshold)
    assert 0.9 < threshold < 1.0  # Dar et al.'s rule on neighbouring slices: high.
    assert figures["fraction_memorized"] == pytest.approx(np.mean(best >= threshold))
    assert figures["median_max_correlation"] == pytest.approx(np.median(best), abs=1e-6)
    assert figures["fraction_above_0.90"] == pytest.approx(np.mean(best >= 0.90))
    samples = sources.open_source(figures["samples"])
    assert figures["median_pairwise_correlation"] == pytest.approx(
        median_pairwise(block_means(samples.read(0, len(samples), dtype=None))), abs=1e-9)
  assert summary["training_median_pairwise_correlation"] == pytest.approx(
      median_pairwise(block_means(demo_run["trained"])), abs=1e-9)
  assert summary["result"] == comparison_page.result_sentence(summary["models"])
  assert summary["variety"] == comparison_page.variety_note(
      summary["models"], summary["training_median_pairwise_correlation"])


def test_audit_compares_samples_with_the_trained_subset(demo_run):
  """The audit's training set is the subset the models trained on, at their resolution."""
  summary = demo_run["plain"]
  subset = demo_run["subset"]
  assert summary["training_set"] == {
      "source": "tfds:mni152/64:train", "num_images": DEMO_SIZE, "of": 48, "subset_seed": 0,
      "ids": subset.ids(), "audit_downsample": FACTOR, "audited_pixels": "16x16"}
  assert subset.ids() == [sources.open_source("tfds:mni152/64:train").image_id(int(i))
                          for i in sources.subset_indices(48, DEMO_SIZE, 0)]
  page = demo_run["plain_page"]
  assert subset.ids()[0] in html.unescape(page) and "data.subset_seed=0" in page
  reference = block_means(demo_run["trained"])
  for name in MODELS:
    audit = json.loads((demo_run["workdir"] / "audit" / name / "summary.json").read_text())
    assert audit["train"]["count"] == DEMO_SIZE and audit["train"]["image_shape"] == [16, 16, 3]
    samples = sources.open_source(summary["models"][name]["samples"])
    best, where = pearson_max(block_means(samples.read(0, len(samples), dtype=None)), reference)
    with np.load(demo_run["workdir"] / "audit" / name / "correlations.npz") as stored:
      np.testing.assert_allclose(stored["values"][:, 0], best, atol=1e-5)
      decided = np.abs(np.sort(stored["values"], axis=1)[:, -1]
                       - np.sort(stored["values"], axis=1)[:, -2]) > 1e-5
      np.testing.assert_array_equal(stored["indices"][decided, 0], where[decided])


def test_demo_refuses_models_of_different_training_sets():
  config = tiny_config().copy_and_resolve_references()
  config.stylegan2.data.num_images = 4
  with pytest.raises(ValueError, match=r"data\.num_images differ.*ddpm.*=8.*stylegan2.*=4"):
    demo_lib.training_set(config, list(MODELS))
  config = tiny_config()
  config.audit.training_images = "tfds:mni152/64:holdout"
  with pytest.raises(ValueError, match="not the models' training source"):
    demo_lib.training_set(config, list(MODELS))


def test_demo_configs_give_both_models_one_training_set_and_budget():
  config = demo_config.get_config()
  budgets = {name: config[name].num_train_steps * config[name].batch_size for name in MODELS}
  assert budgets == {name: demo_config.IMAGES_SEEN for name in MODELS}
  config.data.num_images = 8  # --config.data.num_images=8 sets both models' training set.
  assert [config[name].data.num_images for name in MODELS] == [8, 8]
  assert demo_lib.training_set(config, list(MODELS)).num_images == 8
  assert tuple(demo_sweep_config.get_config().sizes) == (8, 16, 48)
  with pytest.raises(ValueError, match="distinct positive"):
    config.sizes = (8, 8)
    demo_sweep.sizes_of(config)


def test_result_sentence_states_a_result_against_the_paper_as_plainly():
  row = {"num_training_images": 16, "images_seen": 12800, "num_samples": 64, "threshold": 0.997}
  more = {"ddpm": {**row, "fraction_memorized": 0.25, "fraction_above_0.95": 0.5,
                   "median_max_correlation": 0.96},
          "stylegan2": {**row, "fraction_memorized": 0.0, "fraction_above_0.95": 0.0,
                        "median_max_correlation": 0.7}}
  sentence = comparison_page.result_sentence(more)
  assert "ddpm memorized more than stylegan2 at Dar's threshold (25.0% vs 0.0%" in sentence
  assert "12,800 images seen by each model" in sentence and "closer to" in sentence
  less = {"ddpm": more["stylegan2"], "stylegan2": more["ddpm"]}
  sentence = comparison_page.result_sentence(less)
  assert "ddpm memorized less than stylegan2" in sentence and "fewer samples" in sentence
  none = {"ddpm": {**more["ddpm"], "fraction_memorized": 0.0},
          "stylegan2": more["stylegan2"]}
  assert "neither ddpm nor stylegan2 memorized a sample" in comparison_page.result_sentence(none)
  # A generator whose samples are more alike than the training images is named; none else.
  more["ddpm"]["median_pairwise_correlation"] = 0.5
  more["stylegan2"]["median_pairwise_correlation"] = 0.94
  note = comparison_page.variety_note(more, 0.75)
  assert note.startswith("Variety: the samples of stylegan2 (median pairwise r 0.940) are more "
                         "alike one another than the training images are (0.750)")
  assert "ddpm" not in note
  assert comparison_page.variety_note(more, 0.95) is None


def test_report_is_self_contained_and_shows_training_slices(demo_run):
  page = demo_run["plain_page"]
  assert "<link" not in page and "http://" not in page.split("<pre>")[0]
  images = embedded_images(page)
  # The histogram, per model 2 pairs x (match, synthetic, scatter; a subset's slices have no
  # neighbours in it), 2 sample grids.
  assert len(images) >= 1 + 2 * 2 * 3 + 2
  # The training matches are shown pixel for pixel, at the audited resolution: the check the
  # redacted page must pass.
  assert max(best_training_correlation(image, demo_run["small_planes"])
             for image in images) > 0.99
  for name in MODELS:
    assert f"{name}: the closest pairs" in page


def test_redacted_report_holds_no_training_pixels_and_reuses_the_models(demo_run):
  page = (demo_run["workdir"] / "report.html").read_text()
  assert "Redacted: no training pixels" in page
  for image in embedded_images(page):
    assert best_training_correlation(image, demo_run["planes"]) < 0.9
    assert best_training_correlation(image, demo_run["small_planes"]) < 0.9
  # The re-run reused the trained models (their timing was not touched) and re-audited.
  assert (demo_run["workdir"] / "ddpm" / "demo_timing.json").read_text() == demo_run["timing"]
  audit_inputs = json.loads((demo_run["workdir"] / "audit" / "ddpm" / "inputs.json").read_text())
  assert audit_inputs["redact_training_images"] is True
  assert demo_run["redacted"]["redacted"] is True


def test_sweep_draws_one_point_per_size_and_model_from_the_runs(demo_run):
  sweep_dir, sweep = demo_run["sweep_dir"], demo_run["sweep"]
  stored = json.loads((sweep_dir / "summary.json").read_text())
  assert stored["sizes"] == list(SIZES) and set(stored["models"]) == set(MODELS)
  runs = {size: json.loads((sweep_dir / f"n{size}" / "summary.json").read_text())
          for size in SIZES}
  runs[DEMO_SIZE] = demo_run["plain"]  # Before the redacted re-run rewrote it.
  for name in MODELS:
    for key in demo_sweep.FIGURE_KEYS:
      assert stored["models"][name][key] == [runs[size]["models"][name][key] for size in SIZES]
    assert stored["models"][name]["num_training_images"] == list(SIZES)
  # Nested subsets: the 4 slices lie inside the 8.
  ids = {size: stored["training_sets"][str(size)]["ids"] for size in SIZES}
  assert set(ids[4]) < set(ids[8]) and stored == json.loads(json.dumps(sweep))
  # The curve: per panel, one line per model with one point per size, at the runs' values.
  figure = figures_lib.sweep_figure(stored["sizes"], stored["models"])
  for ax, (key, _, _, percent) in zip(figure.axes, figures_lib.SWEEP_PANELS):
    lines = ax.get_lines()
    assert len(lines) == len(MODELS)
    for line, name in zip(lines, MODELS):
      assert list(line.get_xdata()) == list(SIZES)
      expected = [runs[size]["models"][name][key] * (100 if percent else 1) for size in SIZES]
      np.testing.assert_allclose(line.get_ydata(), expected)
  # The page: the sentence, the chart, one table row per size and model, links to the runs.
  page = (sweep_dir / "report.html").read_text()
  assert stored["result"] in html.unescape(page)
  assert stored["result"] == sweep_page.sweep_sentence(stored["sizes"], stored["models"])
  assert stored["result"].startswith("Across 4 and 8 training images")
  training_pairwise = [runs[size]["training_median_pairwise_correlation"] for size in SIZES]
  assert stored["training_median_pairwise_correlation"] == training_pairwise
  assert stored["variety"] == sweep_page.variety_notes(stored["sizes"], stored["models"],
                                                       training_pairwise)
  assert all(note in html.unescape(page) for note in stored["variety"])
  assert len(embedded_images(page)) == 1
  rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>(\w+)</td>(.*?)</tr>", page)
  assert [(int(size), name) for size, name, _ in rows] == [(s, n) for s in SIZES for n in MODELS]
  for size, name, cells in rows:
    memorized = runs[int(size)]["models"][name]["fraction_memorized"]
    assert f'<td class="num">{comparison_page.cell(memorized, "{:.1%}")}</td>' in cells
    assert f'href="n{size}/report.html"' in cells
  for size in SIZES:
    assert (sweep_dir / f"n{size}" / "report.html").is_file()
