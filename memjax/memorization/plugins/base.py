"""What a detector is: `Detector`, and what an audit hands it to run: `AuditContext`.

A detector is one object: its name, its words for the report and the summary, what it needs
(an encoder or nothing), `run` (an `AuditResult` and any arrays to write beside it) and how a
pair is drawn (`aligned_match`: the training image in the synthetic image's frame, and the
transform in words). The audit, the report pages, redaction and validation ask the registry
(`plugins.get`) for it by name and switch on nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from jax.sharding import Mesh

from memjax.memorization import detectors
from memjax.memorization.result import AuditResult
from memjax.memorization.result import array_prefix


@dataclasses.dataclass
class AuditContext:
  """The sets and settings of one audit, as every detector's `run` receives them.

  holdout_max_correlation: each training image's best aligned pixel correlation with the
    held-out images (the audit's calibration search), or None.
  """
  synthetic: Any
  train: Any
  holdout: Any
  options: Any  # audit.AuditOptions
  mesh: Mesh
  embed_fn: Callable[[np.ndarray], np.ndarray] | None = None
  holdout_max_correlation: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Detector:
  """One memorization detector.

  name: how configs and the command line name it (config.audit.detectors); its arrays in
    correlations.npz and its columns in matches.csv start with `prefix` (result.array_prefix).
  measure: what summary.json says it measures.
  words: the report's sentences and labels: name, histogram_title, axis, header, symbol,
    file_suffix, explanation, limits; optionally value (the word a count sentence uses, default
    name), method (the citation in the page's methods) and condition (how a redacted page says
    an image was withheld, default "its <name> with a training image").
  needs_encoder: whether it needs a trained contrastive encoder (config.audit.encoder).
  """
  name: str
  measure: str
  words: Mapping[str, str]
  needs_encoder: bool = False

  @property
  def prefix(self) -> str:
    return array_prefix(self.name)

  def run(self, context: AuditContext) -> tuple[AuditResult, dict[str, dict[str, np.ndarray]]]:
    """Searches and decides: the result, and files to write beside it ({file: {name: array}})."""
    raise NotImplementedError

  def aligned_match(self, result: AuditResult, i: int, train_image: np.ndarray
                    ) -> tuple[np.ndarray, str]:
    """Synthetic image i's training match as the pair is drawn: moved into the synthetic image's
    frame (NaN where it does not reach), and the transform in words ("" when there is none)."""
    del result, i
    return train_image, ""


def decide(holdout_max: np.ndarray | None, context: AuditContext, what: str
           ) -> detectors.Threshold:
  """A detector's threshold: Dar et al.'s percentile of `holdout_max` (each training image's
  best value against the holdout set) when the audit has a holdout set, else the fixed one.

  A calibrated threshold at the limit of exactness would pass exact copies: an error naming it.
  """
  options, holdout = context.options, context.holdout
  if holdout is None:
    return detectors.fixed_threshold(options.threshold)
  holdout_max = np.asarray(holdout_max)
  if holdout_max.shape != (len(context.train),):
    raise ValueError(f"holdout_max_correlation has shape {holdout_max.shape}; expected "
                     f"({len(context.train)},), one value per image of "
                     f"{context.train.description}")
  return check_limit(
      detectors.holdout_threshold(holdout_max, options.holdout_percentile, len(holdout)),
      holdout, what)


def check_limit(chosen: detectors.Threshold, holdout: Any, what: str) -> detectors.Threshold:
  """`chosen`, unless a threshold calibrated on `holdout` lies at the limit of exactness."""
  if chosen.value >= detectors.MAX_THRESHOLD:
    raise ValueError(
        f"the {what} threshold calibrated on {holdout.description} is {chosen.value:.6f}, at "
        f"the limit of exactness ({detectors.MAX_THRESHOLD}): the held-out images are "
        "near-copies of training images, so no copy could be detected. Give a holdout set of "
        "other patients' images, or a fixed --config.audit.threshold without one")
  return chosen
