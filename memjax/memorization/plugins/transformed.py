"""The transform-tolerant detector, "transformed": each synthetic image's largest Pearson
correlation with any training image under the grid's symmetries (flips and, for square images,
turns by 90 degrees) and integer shifts up to config.audit.max_shift pixels, over the overlap
(memorization/transformed.py: exact, float64), thresholded by Dar et al.'s rule on the same
scores of training against holdout images, or fixed."""

from __future__ import annotations

import time

import numpy as np

from memjax.memorization import transformed as transformed_lib
from memjax.memorization.plugins import base
from memjax.memorization.plugins import pixels
from memjax.memorization.result import AuditResult

WORDS = dict(
    name="transform-tolerant correlation",
    histogram_title="The highest correlation under a flip, turn or shift",
    axis="maximum Pearson correlation with the training set under a flip, turn or shift",
    header="most correlated with a training image, flipped, turned or shifted",
    symbol="r under a flip, turn or shift",
    condition="its pixel correlation with a training image, flipped, turned by 90 degrees or "
              "shifted,",
    method=pixels.WORDS["method"] + ", under flips, turns and shifts",
    file_suffix="_transformed",
    explanation=(
        "For every synthetic image, its Pearson correlation with every training image was "
        "computed under every flip and turn by 90 degrees of the image grid (for square "
        "images; flips only otherwise) and every shift of up to an eighth of the image's side (config.audit.max_shift) along "
        "each axis, over the region where the moved image and the training image overlap "
        "(normalized cross-correlation), exactly in float64. The highest value, the training "
        "image and the transform that gave it were kept; each pair below shows the training "
        "image moved into the synthetic image's frame and names the transform. A value of 1.0 "
        "means a copy of a training image, flipped, turned or shifted, up to brightness and "
        "contrast."),
    limits=(
        "Limits: rotations by other angles, scaling, crops beyond the shift range and "
        "deformations are not searched, and a shifted comparison uses fewer pixels than an "
        "aligned one (at the largest shift, the overlap is smaller by the shift's share of "
        "each side)."))


class TransformedCorrelation(base.Detector):
  """The best training match of every synthetic image under the grid's symmetries and shifts."""

  def run(self, context):
    options = context.options
    max_shift = options.max_shift
    start = time.perf_counter()
    match = transformed_lib.best_transformed_match(context.synthetic, context.train,
                                                   max_shift=max_shift)
    holdout_max = None
    if context.holdout is not None:  # the same scores, training images against held-out ones
      holdout_max = transformed_lib.best_transformed_match(
          context.train, context.holdout, max_shift=max_shift).values
    chosen = base.decide(holdout_max, context, "transform-tolerant correlation")
    k = options.k
    values = np.full((len(match.values), k), np.nan)
    indices = np.full((len(match.values), k), -1, np.int64)
    values[:, 0], indices[:, 0] = match.values, match.indices
    group = transformed_lib.symmetries(_spatial_shape(context.synthetic.shape))
    symmetry = np.array([-1 if s is None else group.index(s) for s in match.symmetries],
                        np.int64)
    return AuditResult(
        self.name, values, indices, chosen.value, chosen.description, chosen.rule,
        holdout_max_correlation=holdout_max,
        zero_variance_synthetic=np.flatnonzero(np.isnan(match.values)),
        seconds=time.perf_counter() - start, precision="float64",
        details={"symmetry": symmetry, "shift": match.shifts}), {}

  def aligned_match(self, result, i, train_image):
    symmetry_index = int(result.details["symmetry"][int(i)])
    if symmetry_index < 0:
      return train_image, ""
    spatial = _spatial_shape(train_image.shape)
    symmetry = transformed_lib.symmetries(spatial)[symmetry_index]
    shift = np.asarray(result.details["shift"][int(i)], np.int64)
    if symmetry_index == 0 and not shift.any():  # compared as it is
      return train_image, ""
    return (transformed_lib.into_synthetic_frame(train_image, symmetry, shift),
            transformed_lib.describe(symmetry, shift))


def _spatial_shape(shape) -> tuple[int, ...]:
  """The spatial axes of images of `shape` (channels last for 3 or more axes ending in <= 5)."""
  shape = tuple(shape)
  return shape[:-1] if transformed_lib.has_channels_last(shape) else shape


DETECTOR = TransformedCorrelation(
    name="transformed", words=WORDS,
    measure=("maximum Pearson correlation over the overlap under the image grid's flips, turns "
             "by 90 degrees and integer shifts (normalized cross-correlation, float64)"))
