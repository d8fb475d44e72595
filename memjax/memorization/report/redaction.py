"""The one redaction policy of every report page and figure.

With redaction on (`--config.audit.redact_training_images=true`), a page and the figures written
beside it hold no training pixels. Training images are never read: they appear by id only. No
intensity scatter plot is drawn, since it plots a training image's pixel values. A synthetic
image that correlates at 0.90 or more with a training image (or at or above the threshold, if
that is lower) is itself a near copy of training pixels and is withheld: the pixel detector's
maximum correlation decides where it was computed; where only the embedding detector ran, every
synthetic image whose embedding correlation reaches the same bar is withheld, and where both
ran, an image is withheld if either reaches its bar. Sample grids are left out. What remains:
histograms and scatter plots of correlation values, ids, and synthetic images below the bar.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

WITHHOLD_LEVEL = 0.90


@dataclasses.dataclass(frozen=True)
class Score:
  """One detector's best correlation per synthetic image and its threshold."""
  measure: str  # "correlation" (pixels) or "embedding"
  values: np.ndarray
  threshold: float

  @property
  def bar(self) -> float:
    """The value at or above which a synthetic image is withheld from a redacted page."""
    return min(float(self.threshold), WITHHOLD_LEVEL)


@dataclasses.dataclass(frozen=True)
class Redaction:
  """What a page may draw. Build it with `policy`; `enabled=False` draws everything."""
  enabled: bool
  withheld: np.ndarray  # (N_synthetic,) bool: synthetic images a redacted page must not draw
  scores: tuple[Score, ...] = ()

  @property
  def shows_training(self) -> bool:
    """Training images, and the intensity scatter plots that plot their pixel values."""
    return not self.enabled

  @property
  def shows_sample_grids(self) -> bool:
    return not self.enabled

  def shows_synthetic(self, i: int) -> bool:
    return not (self.enabled and bool(self.withheld[int(i)]))

  def withheld_text(self, i: int) -> str:
    """Why synthetic image `i` is withheld, for the panel that stands in for it."""
    reasons = [f"{'r' if s.measure == 'correlation' else 'embedding r'} ≥ {s.bar:.2f}"
               for s in self.scores if np.nan_to_num(s.values[int(i)], nan=-np.inf) >= s.bar]
    return "withheld: " + " and ".join(reasons) + " with a training image"

  def notice(self) -> str:
    """The page's sentence that says what redaction withheld."""
    if not self.enabled:
      return ""
    bars = {s.measure: s.bar for s in self.scores}
    text = ("Redacted: no training pixels appear on this page. Training images are named by "
            "their ids and never read, intensity scatter plots are hidden, and sample grids are "
            "left out. Synthetic images are withheld where ")
    conditions = []
    if "correlation" in bars:
      conditions.append(f"their pixel correlation with a training image is "
                        f"{bars['correlation']:.2f} or more")
    if "embedding" in bars:
      conditions.append(f"their embedding correlation with a training image is "
                        f"{bars['embedding']:.2f} or more")
    text += " or ".join(conditions) + ": such an image is a near copy of training pixels."
    if "correlation" not in bars:
      text += (" No pixel correlation was computed, so the embedding detector's value decides, "
               "whatever the pixels.")
    return text + f" {int(self.withheld.sum())} synthetic images are withheld."


def policy(enabled: bool, scores: Sequence[Score]) -> Redaction:
  """The redaction of a page whose synthetic images have these detectors' `scores`."""
  scores = tuple(Score(s.measure, np.asarray(s.values, np.float64).reshape(-1), float(s.threshold))
                 for s in scores)
  if not scores:
    raise ValueError("redaction needs at least one detector's scores")
  withheld = np.zeros(scores[0].values.shape, bool)
  for score in scores:
    withheld |= np.nan_to_num(score.values, nan=-np.inf) >= score.bar
  return Redaction(bool(enabled), withheld, scores)
