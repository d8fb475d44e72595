"""Tests for memjax.memorization.report: files, self-contained HTML, ordering, NaN and redaction."""

import base64
import html
import io
import math
import pathlib
import re
import subprocess
import sys

from matplotlib.collections import PathCollection
from matplotlib.text import Text
import numpy as np
from PIL import Image
import pytest

from memjax.memorization import report
from memjax.memorization.report import redaction


class ArraySource:
  """The minimal image-source protocol over a numpy array; `per_volume` slices make one volume."""

  def __init__(self, images, prefix="img_", per_volume=None, description="test images"):
    self.images = np.asarray(images, dtype=np.float32)
    self.shape = self.images.shape[1:]
    self.prefix = prefix
    self.per_volume = per_volume
    self.description = description
    self.reads = 0

  def __len__(self):
    return len(self.images)

  def read(self, start, stop):
    self.reads += 1
    return self.images[start:stop].copy()

  def image_id(self, i):
    return f"{self.prefix}{i:03d}"

  def neighbors(self, i):
    if self.per_volume is None:
      return None, None
    volume = i // self.per_volume
    previous = i - 1 if i > 0 and (i - 1) // self.per_volume == volume else None
    following = i + 1 if i + 1 < len(self) and (i + 1) // self.per_volume == volume else None
    return previous, following


def reference_max_correlation(synthetic, train):
  """Each synthetic image's max Pearson correlation over `train` (NaN, -1 for zero variance)."""
  a = synthetic.reshape(len(synthetic), -1).astype(np.float64)
  b = train.reshape(len(train), -1).astype(np.float64)
  a -= a.mean(axis=1, keepdims=True)
  b -= b.mean(axis=1, keepdims=True)
  norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    corr = (a @ b.T) / norm_a[:, None] / norm_b[None, :]
  corr[~np.isfinite(corr)] = -np.inf
  best = corr.argmax(axis=1).astype(np.int64)
  values = corr.max(axis=1)
  undefined = ~np.isfinite(values)
  values[undefined] = np.nan
  best[undefined] = -1
  return values, best


def embedded_pngs(page):
  """Every <img src=...> of the page, checked to be a base64 PNG data URI, decoded to bytes."""
  sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)
  assert len(sources) == page.count("<img")
  prefix = "data:image/png;base64,"
  for source in sources:
    assert source.startswith(prefix), source[:60]
  return [base64.b64decode(source[len(prefix):], validate=True) for source in sources]


def figure_texts(fig):
  return [t.get_text() for t in fig.findobj(Text)]


def pairs_table(page):
  """(synthetic id, training id, correlation) rows of the page's pairs table."""
  table = re.search(r'<table id="pairs-table">(.*?)</table>', page, re.S).group(1)
  rows = re.findall(r"<tr><td[^>]*>\d+</td><td><code>(.*?)</code></td><td><code>(.*?)</code>"
                    r'</td><td class="num">([-0-9.]+)</td>', table)
  return [(html.unescape(s), html.unescape(t), float(r)) for s, t, r in rows]


@pytest.fixture
def audit(rng):
  """12 synthetic 16x16 images (two planted copies, two zero-variance) against 20 training ones."""
  train = rng.normal(size=(20, 16, 16)).astype(np.float32)
  synthetic = rng.normal(size=(12, 16, 16)).astype(np.float32)
  synthetic[0] = 2.0 * train[7] + 1.0  # A copy up to brightness and contrast: r = 1.
  synthetic[1] = train[12] + 0.1 * rng.normal(size=(16, 16))
  synthetic[4] = 3.0
  synthetic[9] = 0.0
  max_correlation, best_index = reference_max_correlation(synthetic, train)
  holdout = rng.normal(size=(30, 16, 16)).astype(np.float32)
  holdout_max, _ = reference_max_correlation(train, holdout)
  summary = {
      "num_synthetic": 12,
      "num_zero_variance": 2,
      "fraction_memorized": 2 / 10,
      "fraction_above": {"0.90": 0.2, "0.95": 0.2, "0.99": 0.1},
      "quantiles": {"q50": 0.123456789, "q99": 0.99987},
  }
  return dict(
      synthetic=ArraySource(synthetic, "syn_", description="12 samples of a toy model"),
      train=ArraySource(train, "train_", per_volume=5, description="4 toy volumes x 5 slices"),
      max_correlation=max_correlation, best_index=best_index, threshold=0.5,
      threshold_rule="95th percentile of each training image's best correlation with the 30 "
                     "holdout images (Dar et al.)",
      summary=summary, holdout_max_correlation=holdout_max)


def test_top_pairs_orders_descending_skips_nan_and_breaks_ties_by_index():
  values = [0.5, np.nan, 0.9, 0.9, 0.1, np.nan, 0.95, 0.9]
  np.testing.assert_array_equal(report.top_pairs(values, 4), [6, 2, 3, 7])
  np.testing.assert_array_equal(report.top_pairs(values, 100), [6, 2, 3, 7, 0, 4])
  assert report.top_pairs(values, 0).size == 0
  assert report.top_pairs([np.nan, np.nan], 3).size == 0
  assert report.top_pairs(values, 2).dtype == np.int64
  with pytest.raises(ValueError, match="num_pairs"):
    report.top_pairs(values, -1)


def test_embed_png_round_trips_and_rejects_other_bytes():
  buffer = io.BytesIO()
  Image.new("RGB", (3, 2), (10, 20, 30)).save(buffer, format="PNG")
  uri = report.embed_png(buffer.getvalue())
  assert uri.startswith("data:image/png;base64,")
  assert base64.b64decode(uri.split(",", 1)[1]) == buffer.getvalue()
  with pytest.raises(ValueError, match="PNG"):
    report.embed_png(b"GIF89a not a png")


def test_flatten_summary_uses_dotted_keys_and_four_decimals():
  summary = {"a": 1, "b": {"c": 0.123456, "d": [0.5, 2], "e": {"f": None}}, "g": True,
             "h": float("nan"), "i": np.float32(0.25)}
  assert report.flatten_summary(summary) == [
      ("a", "1"), ("b.c", "0.1235"), ("b.d", "[0.5000, 2]"), ("b.e.f", "none"), ("g", "true"),
      ("h", "NaN"), ("i", "0.2500")]


@pytest.mark.parametrize("shape, note, expected_plane", [
    ((16, 12), "", lambda x: x),
    ((16, 12, 1), "", lambda x: x[..., 0]),
    ((16, 12, 5), "channel 0 of 5", lambda x: x[..., 0]),
    ((6, 16, 12), "middle slice along axis 0 (index 3 of 6)", lambda x: x[3]),
    ((6, 16, 12, 5), "middle slice along axis 0 (index 3 of 6), channel 0 of 5",
     lambda x: x[3, ..., 0]),
])
def test_display_plane_and_note(rng, shape, note, expected_plane):
  image = rng.normal(size=shape).astype(np.float32)
  assert report.display_note(shape) == note
  np.testing.assert_array_equal(report.display_plane(image), expected_plane(image))


def test_display_plane_shows_the_first_channel_in_grey():
  # Three channels are modalities here (MNI152: T1, grey and white matter), not colours.
  image = np.stack([np.full((4, 4), 10.0), np.full((4, 4), 20.0), np.full((4, 4), 30.0)], -1)
  image[0, 0, 0] = 99.0
  plane = report.display_plane(image)
  assert report.display_note(image.shape) == "channel 0 of 3"
  assert plane.shape == (4, 4) and plane[0, 0] == 99.0 and plane[1, 1] == 10.0
  with pytest.raises(ValueError, match="shape"):
    report.display_plane(np.zeros((2, 2, 2, 2, 2)))


def test_write_audit_report_writes_three_readable_files(tmp_path, audit):
  paths = report.write_audit_report(tmp_path / "audit", num_pairs=4, **audit)
  assert set(paths) == {"histogram", "pairs", "report"}
  assert paths["report"] == tmp_path / "audit" / "report.html"
  for path in paths.values():
    assert path.is_file() and path.stat().st_size > 1000

  dpi = report.DPI
  expected = {
      "histogram": (report.HISTOGRAM_SIZE_IN[0] * dpi, report.HISTOGRAM_SIZE_IN[1] * dpi),
      "pairs": (report.PAIRS_WIDTH_IN * dpi,
                (report.PAIRS_HEADER_HEIGHT_IN + 4 * report.PAIRS_ROW_HEIGHT_IN) * dpi),
  }
  for name, (width, height) in expected.items():
    with Image.open(paths[name]) as image:
      assert image.format == "PNG"
      assert image.size == (round(width), round(height))
      assert image.size[0] >= 800 and image.size[1] >= 500
      pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{name}.png looks empty"
    assert (pixels < 128).any(axis=-1).mean() > 0.01, f"{name}.png has almost nothing drawn"


def test_html_is_self_contained_and_shows_summary_and_ordered_pairs(tmp_path, audit):
  paths = report.write_audit_report(tmp_path, num_pairs=5, **audit)
  page = paths["report"].read_text(encoding="utf-8")

  assert "http" not in page
  for external in ("<link", "url(", "@import", "<iframe", "<object", "fetch(", "xmlhttprequest",
                   "<script src"):
    assert external not in page.lower()
  # One small inline script (the sortable table), nothing fetched.
  assert page.count("<script") == 1 and "<script>" in page
  pngs = embedded_pngs(page)
  assert pngs[0] == paths["histogram"].read_bytes()
  # Pairs are panels: per pair the training match, the synthetic image, two neighbouring slices
  # (the training set knows its slice order) and the scatter plot.
  assert len(pngs) > 1 + 5 * 4
  for png in pngs:
    with Image.open(io.BytesIO(png)) as image:
      image.verify()

  for key, value in [("num_synthetic", "12"), ("fraction_above.0.90", "0.2000"),
                     ("quantiles.q50", "0.1235"), ("quantiles.q99", "0.9999")]:
    assert re.search(rf"<code>{re.escape(key)}</code></td><td[^>]*>{re.escape(value)}<", page)
  assert "95th percentile of each training image" in page
  assert "0.5000" in page  # The threshold.

  rows = pairs_table(page)
  correlation = audit["max_correlation"]
  expected = report.top_pairs(correlation, 5)
  assert [s for s, _, _ in rows] == [f"syn_{i:03d}" for i in expected]
  assert [t for _, t, _ in rows] == [f"train_{audit['best_index'][i]:03d}" for i in expected]
  values = [r for _, _, r in rows]
  assert values == sorted(values, reverse=True)
  assert rows[0][:2] == ("syn_000", "train_007") and math.isclose(rows[0][2], 1.0)
  assert rows[1][:2] == ("syn_001", "train_012")
  table = re.search(r'<table id="pairs-table">(.*?)</table>', page, re.S).group(1)
  assert table.count("MEMORIZED") == int(np.sum(correlation[expected] >= 0.5))


def test_zero_variance_images_are_counted_listed_and_not_plotted(tmp_path, audit):
  paths = report.write_audit_report(tmp_path, num_pairs=12, **audit)
  page = paths["report"].read_text(encoding="utf-8")
  assert "2 synthetic images have zero variance and no correlation" in page
  listed = re.search(r'<ul id="zero-variance">(.*?)</ul>', page, re.S).group(1)
  assert "syn_004" in listed and "syn_009" in listed
  shown = [s for s, _, _ in pairs_table(page)]
  assert len(shown) == 10 and "syn_004" not in shown and "syn_009" not in shown

  fig = report.pairs_figure(audit["synthetic"], audit["train"], audit["max_correlation"],
                            audit["best_index"], 0.5, num_pairs=12)
  texts = " ".join(figure_texts(fig))
  assert "syn_004" not in texts and "syn_009" not in texts
  assert "no neighbour" in texts  # train_012 is not at a volume edge, but some match is.
  legend = " ".join(figure_texts(report.histogram_figure(
      audit["max_correlation"], 0.5, audit["holdout_max_correlation"])))
  assert "n = 10; 2 with zero variance not shown" in legend
  assert "n = 20)" in legend  # Training vs holdout.


def test_one_zero_variance_image_is_singular(tmp_path, audit):
  audit["max_correlation"][9] = 0.3
  audit["best_index"][9] = 2
  page = report.write_audit_report(tmp_path, num_pairs=2, **audit)["report"].read_text("utf-8")
  assert "1 synthetic image has zero variance and no correlation" in page


def test_all_zero_variance_still_writes_a_report(tmp_path):
  synthetic = ArraySource(np.zeros((3, 8, 8)), "syn_")
  train = ArraySource(np.random.default_rng(1).normal(size=(4, 8, 8)), "train_")
  paths = report.write_audit_report(
      tmp_path, synthetic=synthetic, train=train, max_correlation=np.full(3, np.nan),
      best_index=np.full(3, -1), threshold=0.9, threshold_rule="fixed: config.audit.threshold",
      summary={"num_synthetic": 3})
  page = paths["report"].read_text("utf-8")
  assert "3 synthetic images have zero variance and no correlation" in page
  assert 'id="pairs-table"' not in page
  for name in ("histogram", "pairs"):
    with Image.open(paths[name]) as image:
      assert image.size[0] >= 800
  assert any("No pairs to show" in t for t in figure_texts(report.pairs_figure(
      synthetic, train, np.full(3, np.nan), np.full(3, -1), 0.9)))


def test_neighbours_are_drawn_with_their_correlation_to_the_match(audit):
  fig = report.pairs_figure(audit["synthetic"], audit["train"], audit["max_correlation"],
                            audit["best_index"], 0.5, num_pairs=1)
  texts = figure_texts(fig)
  # syn_000 matches train_007 in the volume train_005..train_009: both neighbours exist.
  assert "train_006\nr with match = " in " ".join(texts)
  assert "train_008\nr with match = " in " ".join(texts)
  assert not any("no neighbour" in t for t in texts)
  assert any(t.startswith("#1") and "MEMORIZED" in t and "r = 1.0000" in t for t in texts)


def test_scatter_is_subsampled_and_reports_r(rng):
  train = rng.normal(size=(3, 150, 150)).astype(np.float32)
  synthetic = (train[1:2] + 0.5 * rng.normal(size=(1, 150, 150))).astype(np.float32)
  max_correlation, best_index = reference_max_correlation(synthetic, train)
  fig = report.pairs_figure(ArraySource(synthetic), ArraySource(train), max_correlation,
                            best_index, 0.9, num_pairs=1)
  (scatter,) = fig.findobj(PathCollection)
  assert len(scatter.get_offsets()) == report.MAX_SCATTER_POINTS
  assert f"r = {max_correlation[0]:.4f}" in figure_texts(fig)
  assert not any("MEMORIZED" in t for t in figure_texts(fig))


def test_scatter_uses_separate_scales_only_when_intensity_ranges_differ(rng):
  train = rng.uniform(0, 255, size=(2, 16, 16)).astype(np.float32)
  for synthetic, separate in [(train[:1] / 127.5 - 1.0, True), (train[:1] + 5.0, False)]:
    max_correlation, best_index = reference_max_correlation(synthetic, train)
    fig = report.pairs_figure(ArraySource(synthetic), ArraySource(train), max_correlation,
                              best_index, 0.9, num_pairs=1)
    scatter_ax = fig.axes[-1]
    assert any("separate axis scales" in t for t in figure_texts(fig)) == separate
    assert (len(scatter_ax.get_lines()) == 0) == separate  # The identity line.
    xs, ys = scatter_ax.get_xlim(), scatter_ax.get_ylim()
    assert (xs == ys) != separate


def test_histogram_bins_have_edges_at_the_threshold_and_at_one():
  data = np.array([0.02, 0.1, 0.3, 0.951, 0.97, 1.0])
  for threshold in (0.95, 0.4471, 0.8):
    edges = report.bin_edges(data, -0.01, 1.0, threshold)
    widths = np.diff(edges)
    np.testing.assert_allclose(widths, widths[0])
    assert edges[0] <= -0.01 and edges[-1] >= 1.0 - 1e-12
    assert np.isclose(edges, threshold).any() and np.isclose(edges, 1.0).any()
    assert 10 <= len(widths) <= 110
    counts, _ = np.histogram(data, edges)
    above = edges[:-1] >= threshold - 1e-12
    assert counts[above].sum() == np.sum(data >= threshold)


def test_redaction_never_reads_or_draws_training_pixels(tmp_path, rng, monkeypatch):
  # Training images are black-and-white checkerboards: drawn, they put many pure black pixels
  # right beside pure white ones, which the smooth grey synthetic images, the text (anti-aliased)
  # and the figure furniture do not.
  checkers = (rng.random((6, 8, 8)) < 0.5).repeat(4, axis=1).repeat(4, axis=2)
  train = np.zeros((6, 32, 32, 3), np.float32)
  train[..., 0] = checkers
  train[..., 1:] = rng.random((6, 32, 32, 2))
  ramp = np.linspace(0.0, 1.0, 32, dtype=np.float32)
  synthetic = np.repeat(checkers[:4, ..., None], 3, axis=-1).astype(np.float32) * 0.1
  synthetic[..., 0] += ramp[None, None, :]  # Smooth: no hard black/white edges when drawn.
  max_correlation, best_index = reference_max_correlation(synthetic, train)
  kwargs = dict(max_correlation=max_correlation, best_index=best_index, threshold=0.5,
                threshold_rule="fixed", summary={"n": 4}, num_pairs=4,
                holdout_max_correlation=rng.uniform(0.2, 0.6, size=6))

  def hard_edges(png):
    with Image.open(io.BytesIO(png)) as image:
      grey = np.asarray(image.convert("L")).astype(int)
    left, right = grey[:, :-1], grey[:, 1:]
    return int(np.sum(((left <= 5) & (right >= 250)) | ((left >= 250) & (right <= 5))))

  # The check can fail: without redaction the training panels draw their checkerboards.
  shown = report.write_audit_report(tmp_path / "shown", synthetic=ArraySource(synthetic, "syn_"),
                                    train=ArraySource(train, "patient_"), **kwargs)
  assert hard_edges(shown["pairs"].read_bytes()) > 2000  # about 3400; redacted: about 320

  train_source = ArraySource(train, "patient_", per_volume=3)
  # The transform-tolerant scores from the arrays: the source then counts only the page's reads.
  original = redaction.transformed_score
  monkeypatch.setattr(redaction, "transformed_score",
                      lambda s, t, threshold: original(s.images, t.images, threshold))
  redacted = report.write_audit_report(tmp_path / "redacted",
                                       synthetic=ArraySource(synthetic, "syn_"),
                                       train=train_source, redact_training_images=True, **kwargs)
  assert train_source.reads == 0
  page = redacted["report"].read_text("utf-8")
  pngs = embedded_pngs(page) + [redacted["pairs"].read_bytes(), redacted["histogram"].read_bytes()]
  assert len(pngs) >= 4
  for png in pngs:
    assert hard_edges(png) < 1000
  assert "Redacted: no training pixels appear on this page" in page
  # Neither pixels nor names: pseudonyms stand for ids, the same for one image on every page.
  assert "patient_" not in page and "syn_" not in page
  key = redaction.pseudonym_key(tmp_path / "redacted")
  assert redaction.PseudonymSource(train_source, key, "training").image_id(0) in page
  assert (tmp_path / "redacted" / redaction.PSEUDONYM_KEY_FILE).stat().st_mode & 0o077 == 0
  fig = report.pairs_figure(ArraySource(synthetic, "syn_"), train_source, max_correlation,
                            best_index, 0.5, num_pairs=4, redact_training_images=True)
  assert not fig.findobj(PathCollection)  # No scatter plot.
  assert train_source.reads == 0


@pytest.mark.parametrize("shape, note", [
    ((16, 16, 5), "channel 0 of 5"),
    ((6, 12, 12), "middle slice along axis 0 (index 3 of 6)"),
    ((6, 12, 12, 5), "middle slice along axis 0 (index 3 of 6), channel 0 of 5"),
])
def test_volumes_and_multichannel_images_render_and_say_what_is_shown(tmp_path, rng, shape, note):
  train = rng.normal(size=(5, *shape)).astype(np.float32)
  synthetic = rng.normal(size=(3, *shape)).astype(np.float32)
  synthetic[0] = train[2]
  max_correlation, best_index = reference_max_correlation(synthetic, train)
  synthetic_source, train_source = ArraySource(synthetic, "syn_"), ArraySource(train, "t_")
  paths = report.write_audit_report(
      tmp_path, synthetic=synthetic_source, train=train_source, max_correlation=max_correlation,
      best_index=best_index, threshold=0.9, threshold_rule="fixed: config.audit.threshold",
      summary={}, num_pairs=2)
  page = paths["report"].read_text("utf-8")
  assert note in page
  with Image.open(paths["pairs"]) as image:
    assert image.size[1] == round(
        (report.PAIRS_HEADER_HEIGHT_IN + 2 * report.PAIRS_ROW_HEIGHT_IN) * report.DPI)
  fig = report.pairs_figure(synthetic_source, train_source, max_correlation, best_index, 0.9,
                            num_pairs=2)
  assert any(note in t for t in figure_texts(fig))


def test_text_is_escaped(tmp_path, audit):
  audit["synthetic"].description = "<script>alert('x')</script> & more"
  paths = report.write_audit_report(tmp_path, title="Audit <b>A & B</b>", num_pairs=1,
                                    **{**audit, "summary": {"<key>": "<value>"}})
  page = paths["report"].read_text("utf-8")
  assert "<script>alert" not in page and "<b>" not in page and "<key>" not in page
  assert re.search(r"&lt;script&gt;alert\((&#x27;|&#39;)x(&#x27;|&#39;)\)&lt;/script&gt; &amp; more",
                   page)
  assert "<title>Audit &lt;b&gt;A &amp; B&lt;/b&gt;</title>" in page
  assert "&lt;value&gt;" in page


@pytest.mark.parametrize("change, message", [
    (dict(max_correlation=np.zeros(5)), "max_correlation has shape"),
    (dict(best_index=np.zeros(12)), "integer array"),
    (dict(best_index=np.full(12, 20)), "is not an index"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(num_pairs=-2), "num_pairs"),
])
def test_inconsistent_inputs_raise(tmp_path, audit, change, message):
  with pytest.raises(ValueError, match=message):
    report.write_audit_report(tmp_path, **{**audit, **change})


def test_module_never_touches_pyplot(tmp_path):
  code = ("import sys, numpy as np\n"
          "from memjax.memorization import report\n"
          "class S:\n"
          "  shape = (8, 8); description = 'd'\n"
          "  def __len__(self): return 2\n"
          "  def read(self, a, b): return np.arange(128, dtype=np.float32).reshape(2, 8, 8)[a:b]\n"
          "  def image_id(self, i): return str(i)\n"
          "  def neighbors(self, i): return None, None\n"
          f"report.write_audit_report({str(tmp_path)!r}, synthetic=S(), train=S(),\n"
          "    max_correlation=np.array([1.0, 1.0]), best_index=np.array([0, 1]), threshold=0.9,\n"
          "    threshold_rule='fixed', summary={}, num_pairs=1)\n"
          "assert 'matplotlib.pyplot' not in sys.modules\n")
  root = pathlib.Path(__file__).resolve().parents[1]
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
  assert (tmp_path / "report.html").is_file()


def test_images_near_1e200_draw_and_correlate_as_at_unit_scale(rng):
  """Issue 25, item 6: float64 images near 1e200 (a real source, read in its stored dtype)
  draw the very grey levels, scatter and r of the same images at unit scale, with no overflow
  warning and no blank panel."""
  import warnings  # pylint: disable=import-outside-toplevel
  from memjax.data.sources import arrays  # pylint: disable=import-outside-toplevel
  train_unit = rng.standard_normal((6, 24, 20))
  synthetic_unit = np.concatenate([train_unit[[2]], rng.standard_normal((2, 24, 20))])
  best = np.array([2, 0, 1])
  reference_r = [np.corrcoef(s.ravel(), train_unit[j].ravel())[0, 1]
                 for s, j in zip(synthetic_unit, best)]

  def draw(scale, offset):
    train = arrays.ArraySource(train_unit * scale + offset, "train")
    synthetic = arrays.ArraySource(synthetic_unit * scale + offset, "synthetic")
    with warnings.catch_warnings():
      warnings.simplefilter("error", RuntimeWarning)
      fig = report.pairs_figure(synthetic, train, np.asarray(reference_r), best, 0.9,
                                num_pairs=3)
      pixels = [np.asarray(image.get_array()) for ax in fig.axes for image in ax.get_images()]
      r = [report.pearson(synthetic.read(i, i + 1, dtype=None), train.read(j, j + 1, dtype=None))
           for i, j in enumerate(best)]
    return fig, pixels, r

  _, unit_pixels, unit_r = draw(1.0, 0.0)
  fig, huge_pixels, huge_r = draw(1e199, 1e200)
  assert len(huge_pixels) == 6  # a match and a synthetic panel per pair
  for unit, huge in zip(unit_pixels, huge_pixels):
    assert np.unique(huge).size > 100  # not a blank panel
    np.testing.assert_allclose(huge.astype(float), unit.astype(float), atol=1)  # grey levels
  np.testing.assert_allclose(unit_r, reference_r, atol=1e-12)
  np.testing.assert_allclose(huge_r, reference_r, atol=1e-9)
  texts = " ".join(figure_texts(fig))
  assert "r undefined" not in texts and "r = 1.0000" in texts
  assert report.pearson(np.full(10, 1e200), np.arange(10.0)) != report.pearson(
      np.full(10, 1e200), np.arange(10.0))  # a constant image: NaN, no division by zero


_REPORT_MEMORY = """
import resource, sys, pathlib
import numpy as np
from memjax.data import sources
from memjax.memorization import report
folder = pathlib.Path(sys.argv[1])
def write(out, synthetic, train):
  report.write_audit_report(folder / out, synthetic=synthetic, train=train, summary={"n": 2},
                            max_correlation=np.array([1.0, 0.01]), best_index=np.array([1, 0]),
                            threshold=0.5, threshold_rule="fixed", num_pairs=2)
tiny = np.ones((3, 8, 8), np.float32) * np.arange(8)
write("warm", sources.open_source(tiny[:2]), sources.open_source(tiny))  # imports, fonts
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write("out", sources.open_source(str(folder / "synthetic.npy")),
      sources.open_source(str(folder / "train.npy")))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_a_large_images_report_holds_no_float64_copy_of_a_pair(tmp_path, rng):
  """Issue 25, item 9, scaled down to 3000 x 3000 float32 images (36 MB each): writing the report
  (figures and page) raises the peak RSS by less than 5 images. A pair with its float64 copies
  would be 6; the report before the fix took 19 here (and 4.97 GiB at 8000 x 8000)."""
  side = 3000
  train = rng.standard_normal((3, side, side), dtype=np.float32)
  np.save(tmp_path / "train.npy", train)
  np.save(tmp_path / "synthetic.npy",
          np.stack([train[1], rng.standard_normal((side, side), dtype=np.float32)]))
  del train
  child = subprocess.run([sys.executable, "-c", _REPORT_MEMORY, str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=False,
                         cwd=pathlib.Path(__file__).resolve().parents[1])
  assert child.returncode == 0, child.stderr[-3000:]
  growth = int(child.stdout.strip().splitlines()[-1])
  image_bytes = side * side * 4
  assert growth < 5 * image_bytes, f"{growth / 2**20:.0f} MB"
  page = (tmp_path / "out" / "report.html").read_text("utf-8")
  assert len(page) < 20 * 2**20  # planes drawn at most 1024 pixels a side, not 3000
  assert "MEMORIZED" in page or "memorized" in page
