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


def words(measure: str) -> dict[str, str]:
  """The sentences and labels of one detector, from its plug-in (memorization/plugins)."""
  from memjax.memorization import plugins  # pylint: disable=g-import-not-at-top
  return dict(plugins.get(measure).words)


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
