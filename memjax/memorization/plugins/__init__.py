"""Detectors as plug-ins: one `Detector` object per detector behind one registry, picked by name
(as big_vision picks its evaluators).

  config.audit.detectors = "correlation,transformed"   # or --config.audit.detectors=...

Adding a detector is one new module in this package that defines a `base.Detector` and one line
in _REGISTRY below. The audit, its summary, matches.csv, correlations.npz, the report pages and
redaction take everything they say and draw about a detector from its object.
"""

from __future__ import annotations

from collections.abc import Sequence

from memjax.memorization.plugins import embeddings
from memjax.memorization.plugins import pixels
from memjax.memorization.plugins import transformed
from memjax.memorization.plugins.base import AuditContext
from memjax.memorization.plugins.base import Detector

_REGISTRY: dict[str, Detector] = {
    pixels.DETECTOR.name: pixels.DETECTOR,
    embeddings.DETECTOR.name: embeddings.DETECTOR,
    transformed.DETECTOR.name: transformed.DETECTOR,
}
# The old config.audit.detector values that name more than one detector.
_DEPRECATED = {"both": ("correlation", "embedding")}


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Detector:
  """The detector registered as `name`; a ValueError naming the known ones otherwise."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown detector {name!r} (config.audit.detectors); expected one or more "
                     f"of {', '.join(_REGISTRY)}, separated by commas")
  return _REGISTRY[name]


def parse(value: str | Sequence[str]) -> tuple[str, ...]:
  """Detector names from "a,b", a sequence, or the deprecated "both"; each known, none twice."""
  if isinstance(value, str):
    if value.strip() in _DEPRECATED:
      return _DEPRECATED[value.strip()]
    value = [part.strip() for part in value.split(",") if part.strip()]
  chosen = tuple(value)
  if not chosen:
    raise ValueError("config.audit.detectors names no detector; expected one or more of "
                     f"{', '.join(_REGISTRY)}, separated by commas")
  for name in chosen:
    get(name)
  if len(set(chosen)) != len(chosen):
    raise ValueError(f"config.audit.detectors names a detector twice: {','.join(chosen)}")
  return chosen


__all__ = ["AuditContext", "Detector", "get", "names", "parse"]
