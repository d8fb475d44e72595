"""The report pages as a reader and a privacy officer see them: redaction on every page (decoded
images checked against the training set), slice order, the pairs at the threshold, the sortable
table of flagged images, the zoomed histogram and the data table."""

import base64
import html
import io
import re

from matplotlib.text import Annotation
import numpy as np
from PIL import Image
import pytest

from memjax.memorization import audit
from memjax.memorization import report
from memjax.memorization.report import figures
from memjax.memorization.report import redaction
from memjax.memorization.report import sections
from memjax.memorization.report import slices
from memjax.memorization.result import AuditResult

SIDE = 16


class RecordingSource:
  """An image source over an array that records which images were read; optional ids."""

  def __init__(self, images, ids=None, description="test images"):
    self.images = np.asarray(images, np.float32)
    self.shape = self.images.shape[1:]
    self.description = description
    self._ids = ids or [f"img_{i:03d}" for i in range(len(self.images))]
    self.read_indices = set()

  def __len__(self):
    return len(self.images)

  def read(self, start, stop):
    self.read_indices.update(range(start, stop))
    return self.images[start:stop].copy()

  def image_id(self, i):
    return self._ids[i]

  def ids(self):
    return list(self._ids)

  def neighbors(self, i):
    return None, None


def shift_invariant_embedding(images):
  """|FFT| of each image: a circular shift leaves it unchanged, as a trained encoder would."""
  spectrum = np.abs(np.fft.rfft2(np.asarray(images, np.float64), axes=(1, 2)))
  return spectrum.reshape(len(images), -1)[:, 1:].astype(np.float32)


@pytest.fixture(scope="module")
def planted():
  """Noise images; synthetic: exact copies (train 3, 8), a contrast-changed copy (11), a noisy
  copy (15), a circularly shifted copy (20, which only the embedding finds) and 10 novel ones."""
  rng = np.random.default_rng(7)
  train = rng.random((30, SIDE, SIDE), dtype=np.float32)
  holdout = rng.random((30, SIDE, SIDE), dtype=np.float32)
  copies = np.stack([train[3], train[8], 0.6 * train[11] + 0.2,
                     train[15] + 0.15 * rng.random((SIDE, SIDE), dtype=np.float32),
                     np.roll(train[20], (5, 3), axis=(0, 1))])
  synthetic = np.concatenate([copies, rng.random((10, SIDE, SIDE), dtype=np.float32)])
  return dict(synthetic=synthetic, train=train, holdout=holdout)


def page_images(page):
  """Every image the page embeds, decoded to grey; fails unless each is a base64 PNG data URI."""
  sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)
  assert len(sources) == page.count("<img")
  images = []
  for source in sources:
    assert source.startswith("data:image/png;base64,"), source[:60]
    data = base64.b64decode(source.split(",", 1)[1], validate=True)
    with Image.open(io.BytesIO(data)) as image:
      images.append(np.asarray(image.convert("L"), np.float64))
  return images


def best_training_correlation(image, train):
  """The image (resized to a training image's size) against every training image: max |r|."""
  if image.shape != train.shape[1:]:
    image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(
        train.shape[1:][::-1], Image.BILINEAR), np.float64)
  x = image.ravel() - image.mean()
  if not np.any(x):
    return 0.0
  y = train.reshape(len(train), -1).astype(np.float64)
  y = y - y.mean(axis=1, keepdims=True)
  return float(np.max(np.abs(y @ x) / (np.linalg.norm(y, axis=1) * np.linalg.norm(x))))


def highest(page, train):
  return max(best_training_correlation(image, train) for image in page_images(page))


@pytest.mark.parametrize("detector", ["correlation", "both", "embedding"])
def test_redacted_audit_pages_show_no_image_that_correlates_with_a_training_image(
    tmp_path, planted, detector):
  options = dict(**planted, detector=detector, progress=False, num_pairs=3,
                 embed_fn=None if detector == "correlation" else shift_invariant_embedding)
  audit.run_audit(tmp_path / "shown", **options)
  shown = (tmp_path / "shown" / "report.html").read_text("utf-8")
  if detector != "embedding":  # The check can fail: unredacted, the copies are drawn.
    assert highest(shown, planted["train"]) > 0.99
  audit.run_audit(tmp_path / "redacted", redact_training_images=True, **options)
  page = (tmp_path / "redacted" / "report.html").read_text("utf-8")
  assert "Redacted: no training pixels appear on this page" in page
  assert len(page_images(page)) >= 1
  assert highest(page, planted["train"]) < 0.9
  # The circularly shifted copy (synthetic 4) is withheld by the transform-tolerant correlation
  # whatever the detectors saw.
  assert "r under a flip, turn or shift ≥" in page
  assert "pixel intensities" in page and "scatter plot hidden" in page
  if detector == "embedding":
    assert "No pixel correlation was computed by the audit, so the embedding detector" in page
  if detector == "both":  # The shifted copy is withheld for its embedding, not its pixels.
    assert "withheld: embedding r ≥" in page


@pytest.fixture
def transformed_from_arrays(monkeypatch):
  """The transform-tolerant scores computed from the recording sources' arrays, so that the
  sources record only what the page and its figures read."""
  original = redaction.transformed_score

  def from_arrays(synthetic, train, threshold):
    return original(np.asarray(synthetic.images), np.asarray(train.images), threshold)

  monkeypatch.setattr(redaction, "transformed_score", from_arrays)


def test_redaction_never_reads_withheld_or_training_images(tmp_path, planted,
                                                           transformed_from_arrays):
  """No page or figure can draw what it never read: not a training image, not a near copy."""
  values = np.array([1.0, 1.0, 1.0, 0.93, 0.2] + [0.1] * 10)
  embedding_values = np.array([1.0, 1.0, 1.0, 0.5, 0.99] + [0.3] * 10)
  best = np.array([3, 8, 11, 15, 1] + list(range(10)))
  synthetic = RecordingSource(planted["synthetic"], description="synthetic")
  train = RecordingSource(planted["train"], description="train")
  report.write_audit_report(
      tmp_path, synthetic=synthetic, train=train, summary={}, num_pairs=15,
      redact_training_images=True, results=[
          AuditResult.from_best("correlation", values, best, 0.95, "fixed"),
          AuditResult.from_best("embedding", embedding_values, best[::-1].copy(), 0.98,
                                "fixed")])
  assert train.read_indices == set()
  # 0-3 reach the pixel bar min(0.95, 0.90); 4 the embedding bar min(0.98, 0.90).
  assert synthetic.read_indices == set(range(5, 15))


def test_the_policy_withholds_at_the_lower_of_the_threshold_and_0_90():
  pixels = redaction.Score("correlation", np.array([0.95, 0.89, 0.5, np.nan, 0.85]), 0.97)
  embeddings = redaction.Score("embedding", np.array([0.1, 0.1, 0.95, 0.2, 0.2]), 0.93)
  moved = redaction.Score(redaction.TRANSFORMED, np.array([0.2, 0.2, 0.2, 0.2, 0.91]), 0.97)
  policy = redaction.policy(True, [pixels, embeddings, moved])
  np.testing.assert_array_equal(policy.withheld, [True, False, True, False, True])
  assert redaction.policy(True, [redaction.Score("correlation", [0.85], 0.8),
                                 redaction.Score(redaction.TRANSFORMED, [0.1], 0.8)]).withheld[0]
  # Redaction without the transform-tolerant scores is refused: a flipped copy would pass.
  with pytest.raises(ValueError, match="transform-tolerant"):
    redaction.policy(True, [pixels])
  assert not policy.shows_training and not policy.shows_sample_grids
  assert policy.shows_synthetic(1) and not policy.shows_synthetic(2)
  assert policy.withheld_text(2) == "withheld: embedding r ≥ 0.90 with a training image"
  off = redaction.policy(False, [pixels])
  assert off.shows_training and off.shows_synthetic(0) and off.notice() == ""


def test_redacted_comparison_page_shows_no_training_pixels(tmp_path, planted,
                                                          transformed_from_arrays):
  values = np.array([1.0, 1.0, 1.0, 0.93, 0.2] + [0.1] * 10)
  best = np.array([3, 8, 11, 15, 1] + list(range(10)))

  def write(name, redact):
    train = RecordingSource(planted["train"], description="train")
    result = AuditResult.from_best("correlation", values, best, 0.5, "fixed")
    models = [report.ModelAudit(model, RecordingSource(planted["synthetic"]), result,
                                {"fraction_memorized": 0.25}) for model in ("ddpm", "stylegan2")]
    page = report.write_comparison_report(
        tmp_path / name, models=models, train=train, threshold=0.5, threshold_rule="fixed",
        holdout_max_correlation=np.full(30, 0.3), settings={"seed": 0}, num_pairs=3,
        redact=redact).read_text("utf-8")
    return page, train, models

  shown, _, _ = write("shown.html", False)
  assert highest(shown, planted["train"]) > 0.99
  page, train, models = write("redacted.html", True)
  assert highest(page, planted["train"]) < 0.9
  assert "Samples</h2>" in shown and "Samples</h2>" not in page
  assert train.read_indices == set()
  for m in models:  # 0-3 reach the bar min(0.5, 0.90): never read, so never drawn.
    assert m.synthetic.read_indices and m.synthetic.read_indices.isdisjoint(range(4))


def test_slice_order_is_inferred_from_trailing_slice_numbers():
  ids = ["sub01/slice_002.png", "sub01/slice_000.png", "sub01/slice_001.png",
         "sub02_s7.png", "sub02_s9.png", "other.png"]
  order = slices.infer_slice_order(ids)
  assert order[2] == (1, 0) and order[1] == (None, 2) and order[0] == (2, None)
  assert order[3] == (None, 4) and order[4] == (3, None)  # a skipped slice: the next present
  assert 5 not in order
  # Numbered images of one series are not slices of volumes.
  assert slices.infer_slice_order([f"img_{i:04d}.png" for i in range(10)]) is None
  source = RecordingSource(np.zeros((6, 2, 2)), ids=ids)
  lookup = slices.neighbor_lookup(source, [2])
  assert lookup(2) == (1, 0)
  assert slices.neighbor_lookup(source, [5]) is None  # no shown image has a neighbour


@pytest.mark.parametrize("ordered", [True, False])
def test_neighbour_panels_only_where_the_slice_order_is_known(tmp_path, planted, ordered):
  n = len(planted["train"])
  ids = ([f"sub{i // 10:02d}_slice_{i % 10:03d}.png" for i in range(n)] if ordered
         else [f"train_{i:04d}.png" for i in range(n)])
  train = RecordingSource(planted["train"], ids=ids)
  values = np.array([1.0, 1.0, 1.0, 0.93, 0.2] + [0.1] * 10)
  best = np.array([3, 8, 11, 15, 1] + list(range(10)))
  paths = report.write_audit_report(
      tmp_path, synthetic=RecordingSource(planted["synthetic"]), train=train,
      max_correlation=values, best_index=best, threshold=0.5, threshold_rule="fixed",
      summary={}, num_pairs=3)
  page = paths["report"].read_text("utf-8")
  assert ("previous slice sub00_slice_002.png (r with match" in page) == ordered
  assert ("yardstick" in page) == ordered
  assert ("previous slice" in " ".join(
      t.get_text() for t in report.pairs_figure(
          RecordingSource(planted["synthetic"]), train, values, best, 0.5,
          num_pairs=3).findobj(lambda a: hasattr(a, "get_text")))) == ordered


def test_pairs_at_the_threshold_and_the_sortable_flagged_table(tmp_path, planted):
  values = np.array([1.0, 0.99, 0.9, 0.81, 0.8, 0.79, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05,
                     np.nan])
  best = np.arange(15) % 30
  np.testing.assert_array_equal(sections.near_threshold(values, 0.8, 2, exclude=[0]),
                                [3, 4, 5, 6])
  paths = report.write_audit_report(
      tmp_path, synthetic=RecordingSource(planted["synthetic"]),
      train=RecordingSource(planted["train"]), max_correlation=values, best_index=best,
      threshold=0.8, threshold_rule="fixed", summary={}, num_pairs=2)
  page = paths["report"].read_text("utf-8")
  near = page.split("At the threshold</h2>")[1].split("Flagged images</h2>")[0]
  shown = [float(r) for r in re.findall(r"r = ([0-9.]+),", near)]
  assert shown == [0.9, 0.81, 0.8, 0.79, 0.7, 0.6]  # three at or above 0.8, three below
  assert near.count("MEMORIZED") == 3
  table = re.search(r'<table id="flagged-table" class="sortable">(.*?)</table>', page, re.S)
  rows = re.findall(r"<tr><td[^>]*>(.*?)</td><td><code>(.*?)</code></td><td><code>(.*?)</code>"
                    r'</td><td class="num" data-sort="([-0-9.e]+)">', table.group(1))
  assert [html.unescape(s) for _, s, _, _ in rows] == [f"img_{i:03d}" for i in range(5)]
  assert [float(v) for *_, v in rows] == [1.0, 0.99, 0.9, 0.81, 0.8]
  for thumbnail, *_ in rows:
    src = re.search(r'src="data:image/png;base64,([^"]+)"', thumbnail).group(1)
    with Image.open(io.BytesIO(base64.b64decode(src))) as image:
      assert image.size == (SIDE, SIDE)
  assert page.count("<script") == 1 and "table.sortable" in page and "http" not in page


def test_histogram_zooms_to_the_threshold_and_its_labels_never_overlap():
  rng = np.random.default_rng(0)
  holdout = np.clip(0.985 + 0.006 * rng.normal(size=400), 0, 1)  # an MRI-like holdout
  synthetic = np.concatenate([np.clip(0.984 + 0.006 * rng.normal(size=90), 0, 1), np.ones(8),
                              rng.uniform(0.6, 0.9, size=20)])
  fig = figures.histogram_figure(synthetic, 0.9881, holdout)
  axes = fig.axes
  assert len(axes) == 2
  assert axes[1].get_xlim()[0] > 0.9 and axes[0].get_xlim()[0] < 0.7
  label = axes[0].get_xlabel()
  assert "orange: each training image vs the held-out images" in label
  assert "blue: each synthetic image vs the training images" in label
  renderer = fig.canvas.get_renderer()
  for ax in axes:
    boxes = [a.get_window_extent(renderer) for a in ax.findobj(Annotation) if a.get_text()]
    assert any("threshold 0.9881" in a.get_text() for a in ax.findobj(Annotation))
    for n, box in enumerate(boxes):
      for other in boxes[n + 1:]:
        assert not box.overlaps(other)
  # Without a sliver to zoom into, one panel.
  assert len(figures.histogram_figure(rng.uniform(0, 1, 50), 0.5, rng.uniform(0, 1, 50)).axes) == 1


def test_the_data_table_fills_the_holdout_row_and_claims_only_what_was_measured(tmp_path,
                                                                                planted):
  audit.run_audit(tmp_path, **planted, detector="both", embed_fn=shift_invariant_embedding,
                  progress=False, num_pairs=1)
  page = (tmp_path / "report.html").read_text("utf-8")
  table = re.search(r'<table id="data-table">(.*?)</table>', page, re.S).group(1)
  holdout = re.search(r"<tr><td>held-out reference</td>(.*?)</tr>", table, re.S).group(1)
  assert '<td class="num">30</td>' in holdout and "(16, 16)" in holdout
  for claim in ("re-scaled", "also finds", "also catches"):
    assert claim not in page
  assert "tools/validate_detectors.py" in page
