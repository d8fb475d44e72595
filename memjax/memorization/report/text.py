"""The words of the report pages: what each detector measures, and values formatted as text.

Every page (the audit, the two-detector audit, the demo's comparison) says the same thing the
same way, so the sentences live here once. Claims about what a detector finds are limited to what
it computes: how often it finds a kind of altered copy is measured by tools/validate_detectors.py,
not asserted on a page.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from memjax.memorization.detectors import FIXED_THRESHOLDS  # pylint: disable=unused-import

MEASURES = ("correlation", "embedding")

_WORDS = {
    "correlation": dict(
        name="pixel correlation",
        histogram_title="The highest correlation coefficient",
        axis="maximum Pearson correlation with the training set",
        header="most correlated with a training image",
        symbol="r",
        file_suffix="",
        explanation=(
            "For every synthetic image, its Pearson correlation with every training image was "
            "computed over all pixels (background included), and the highest value and the "
            "training image that gave it were kept. A correlation of 1.0 means the synthetic "
            "image is a pixel-exact copy of a training image up to a change of brightness and "
            "contrast; values close to 1.0 mean a near copy. Different patients' images of the "
            "same anatomy also correlate well, so the value is read against a threshold."),
        limits=(
            "Limits: the correlation compares images pixel by pixel with no shift, flip or "
            "rotation search, so a low value does not by itself prove that no patient was "
            "copied.")),
    "embedding": dict(
        name="embedding correlation",
        histogram_title="The highest correlation of embeddings",
        axis="maximum Pearson correlation of embeddings with the training set",
        header="whose embeddings are most correlated with a training image's",
        symbol="embedding r",
        file_suffix="_embedding",
        explanation=(
            "Every synthetic, training and held-out image was embedded by a self-supervised "
            "contrastive encoder trained on the training images (Dar et al. 2023) to map an "
            "image and its augmented versions to nearby embeddings and other images apart. For "
            "every synthetic image, the Pearson correlation of its embedding with every training "
            "image's embedding was computed (1 minus Dar et al.'s 'correlation' distance), and "
            "the highest value and the training image that gave it were kept. The value is read "
            "against a threshold calibrated in the same way as the pixel one."),
        limits=(
            "Limits: the encoder ignores only what its augmentations taught it to ignore, and "
            "neighbouring slices of one patient embed close together by design. Which kinds of "
            "altered copy it finds, and how often, is not measured on this page: measure it "
            "with tools/validate_detectors.py on planted copies.")),
}


def words(measure: str) -> dict[str, str]:
  """The sentences and labels of one detector ("correlation" or "embedding")."""
  if measure not in _WORDS:
    raise ValueError(f"unknown measure {measure!r}; expected one of {', '.join(MEASURES)}")
  return _WORDS[measure]


def plural(count: int, singular: str, plural_form: str) -> str:
  return f"{count} {singular if count == 1 else plural_form}"


def shorten(text: str, limit: int = 40) -> str:
  """Keeps both ends of a long id (paths differ at the end, data sets at the start)."""
  if len(text) <= limit:
    return text
  head = (limit - 1) // 2
  return text[:head] + "…" + text[-(limit - 1 - head):]


def wrap_id(text: str, width: int = 26) -> str:
  """An id on at most two lines of `width` characters, broken after a '/', '_', '-' or '.'."""
  if len(text) <= width:
    return text
  cut = max(text.rfind(sep, 0, width) for sep in "/_-.") + 1
  cut = cut if cut > width // 3 else width
  return text[:cut] + "\n" + shorten(text[cut:], width)


def sentence(text: str) -> str:
  """`text` stripped, with a full stop unless it already ends a sentence."""
  text = text.strip()
  return text + "." if text and text[-1] not in ".!?" else text


def format_value(value: Any) -> str:
  """A summary value as table text: floats to 4 decimals, sequences element-wise."""
  if value is None:
    return "none"
  if isinstance(value, (bool, np.bool_)):
    return "true" if value else "false"
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return "NaN" if np.isnan(value) else f"{float(value):.4f}"
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return "[" + ", ".join(format_value(v) for v in value) + "]"
  return str(value)


def flatten_summary(summary: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
  """(dotted key, formatted value) rows of a nested summary dict; floats to 4 decimals."""
  rows = []
  for key, value in summary.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      rows.extend(flatten_summary(value, prefix=f"{name}."))
    else:
      rows.append((name, format_value(value)))
  return rows


def zero_variance_sentence(count: int, measure: str = "correlation",
                           zero_variance: int | None = None) -> str:
  """Why `count` synthetic images have no correlation: `zero_variance` of them (all, when None)
  are constant; the others have no training image with nonzero variance to correlate with."""
  zero_variance = count if zero_variance is None else zero_variance
  verb = "has" if count == 1 else "have"
  images = plural(count, "synthetic image", "synthetic images")
  constant = "a constant embedding" if measure == "embedding" else "zero variance"
  if zero_variance == count:
    return f"{images} {verb} {constant} and no correlation."
  if zero_variance == 0:
    return (f"{images} {verb} no correlation: no training image has "
            f"{'a non-constant embedding' if measure == 'embedding' else 'nonzero variance'}.")
  some = "has" if zero_variance == 1 else "have"
  return (f"{images} {verb} no correlation: {zero_variance} {some} {constant}, and no training "
          "image can be correlated with the others.")


def histogram_caption(zoomed: bool, what: str = "") -> str:
  """The caption of a histogram figure; `zoomed`: it has the panel zoomed to the threshold."""
  caption = ("Density histograms on shared bins" + (f" of {what}" if what else "") + "; "
             if not zoomed else
             "Left: the whole range, as densities on shared bins" + (f" of {what}" if what else "")
             + ". Right: zoomed to the threshold, as the percentage of each set in each bin. ")
  return caption + ("The solid line is the threshold, the dashed lines the fixed thresholds "
                    "0.90, 0.95 and 0.99. Zero-variance images are not shown.")
