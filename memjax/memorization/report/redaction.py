"""The one redaction policy of every report page and figure.

With redaction on (`--config.audit.redact_training_images=true`), a page and the figures written
beside it hold no training pixels. Training images are never drawn: they appear by id only. No
intensity scatter plot is drawn, since it plots a training image's pixel values. A synthetic
image that resembles a training image at 0.90 or more (or at or above the threshold, if that is
lower) is withheld, by every detector that ran and always by the transform-tolerant correlation
(`transformed_score`: flips, turns by 90 degrees and shifts, exactly), so that a flipped or
shifted copy of a training image is withheld like an aligned one. Sample grids are left out.
What remains: histograms and scatter plots of correlation values, and synthetic images below
the bar. Image ids become stable pseudonyms (`PseudonymSource`: a keyed hash, the key kept in the
work dir as PSEUDONYM_KEY_FILE, never on the page) and no file name or path appears: hospital
file names often carry patient or accession numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import pathlib
import secrets
from typing import Any, Mapping, Sequence

import numpy as np

from memjax.memorization import transformed as transformed_lib

WITHHOLD_LEVEL = 0.90
TRANSFORMED = "transformed"  # the transform-tolerant detector's name in the registry


def _words(measure: str) -> dict[str, str]:
  from memjax.memorization import plugins  # pylint: disable=g-import-not-at-top
  return dict(plugins.get(measure).words)


@dataclasses.dataclass(frozen=True)
class Score:
  """One detector's best correlation per synthetic image and its threshold."""
  measure: str  # "correlation" (pixels), "embedding" or TRANSFORMED
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
    reasons = [f"{_words(s.measure)['symbol']} ≥ {s.bar:.2f}"
               for s in self.scores if np.nan_to_num(s.values[int(i)], nan=-np.inf) >= s.bar]
    return "withheld: " + " and ".join(reasons) + " with a training image"

  def notice(self) -> str:
    """The page's sentence that says what redaction withheld."""
    if not self.enabled:
      return ""
    bars = {s.measure: s.bar for s in self.scores}
    text = ("Redacted: no training pixels appear on this page. Training images are never "
            "drawn, every image is named by a pseudonym rather than its file name, intensity "
            "scatter plots are hidden, and sample grids are left out. A synthetic image is "
            "withheld where ")
    conditions = []
    for measure, bar in sorted(bars.items(), key=lambda item: item[0] == TRANSFORMED):
      words = _words(measure)
      condition = words.get("condition", f"its {words['name']} with a training image")
      conditions.append(f"{condition} is {bar:.2f} or more")
    text += (" or ".join(conditions) + ": it resembles a training image that closely, which "
             "does not make every such image a copy.")
    if "correlation" not in bars:
      text += (" No pixel correlation was computed by the audit, so the embedding detector's "
               "value and the transform-tolerant correlation decide.")
    return text + f" {int(self.withheld.sum())} synthetic images are withheld."


def transformed_score(synthetic, train, threshold: float | None) -> Score:
  """The transform-tolerant correlation of every synthetic image (`transformed.py`), with the
  pixel detector's threshold where there is one (else the withholding level decides)."""
  match = transformed_lib.best_transformed_match(synthetic, train)
  return Score(TRANSFORMED, match.values,
               WITHHOLD_LEVEL if threshold is None else float(threshold))


def policy(enabled: bool, scores: Sequence[Score]) -> Redaction:
  """The redaction of a page whose synthetic images have these detectors' `scores`."""
  scores = tuple(Score(s.measure, np.asarray(s.values, np.float64).reshape(-1), float(s.threshold))
                 for s in scores)
  if not scores:
    raise ValueError("redaction needs at least one detector's scores")
  if enabled and TRANSFORMED not in {s.measure for s in scores}:
    raise ValueError("a redacted page needs the transform-tolerant scores (transformed_score): "
                     "a flipped or shifted copy must be withheld too")
  withheld = np.zeros(scores[0].values.shape, bool)
  for score in scores:
    withheld |= np.nan_to_num(score.values, nan=-np.inf) >= score.bar
  return Redaction(bool(enabled), withheld, scores)


PSEUDONYM_KEY_FILE = ".pseudonym_key"


def pseudonym_key(folder: str | os.PathLike) -> bytes:
  """The work dir's pseudonym key: 32 random bytes, made once (owner-only) and kept, so that an
  image has the same pseudonym on every page and re-run of the work dir."""
  path = pathlib.Path(folder) / PSEUDONYM_KEY_FILE
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
      f.write(secrets.token_bytes(32))
  return path.read_bytes()


class PseudonymSource:
  """An image source whose ids are pseudonyms ("<role>-<10 hex digits>", an HMAC-SHA256 of the
  id under `key`) and whose description names no file: everything else is the source's own,
  including slice order (from the real ids, which never leave)."""

  def __init__(self, source: Any, key: bytes, role: str):
    self._source, self._key, self._role = source, key, role
    self.description = f"the {role} images ({len(source)}; names withheld)"
    self._order = None

  def __len__(self) -> int:
    return len(self._source)

  def __getattr__(self, name: str) -> Any:  # shape, dtype, read, read_into, ...
    return getattr(self._source, name)

  def image_id(self, index: int) -> str:
    digest = hmac.new(self._key, f"{self._role}:{self._source.image_id(index)}".encode(),
                      hashlib.sha256).hexdigest()
    return f"{self._role}-{digest[:10]}"

  def ids(self) -> list[str]:
    return [self.image_id(i) for i in range(len(self))]

  def neighbors(self, index: int) -> tuple[int | None, int | None]:
    from memjax.memorization.report import slices  # pylint: disable=g-import-not-at-top
    own = getattr(self._source, "neighbors", None)
    found = tuple(own(index)) if callable(own) else (None, None)
    if found != (None, None):
      return found
    if self._order is None:
      self._order = slices.infer_slice_order(list(self._source.ids())) or {}
    return self._order.get(int(index), (None, None))


def without_identifiers(summary: Mapping[str, Any]) -> dict[str, Any]:
  """A summary for a redacted page: no sources (paths), no image ids, no settings that can hold a
  path; counts, values and fingerprints stay."""
  dropped = {"source", "ids", "encoder_description", "encoder"}
  out = {}
  for key, value in summary.items():
    if key in dropped:
      continue
    out[key] = without_identifiers(value) if isinstance(value, Mapping) else value
  return out
