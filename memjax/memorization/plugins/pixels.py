"""The pixel detector, "correlation": the maximum Pearson correlation over all pixels/voxels and
channels (Akbar, Wang & Eklund 2025), thresholded by Dar et al.'s rule on a holdout set or fixed."""

from __future__ import annotations

import time

from memjax.memorization import search as search_lib
from memjax.memorization.plugins import base
from memjax.memorization.result import AuditResult

WORDS = dict(
    name="pixel correlation",
    histogram_title="The highest correlation coefficient",
    axis="maximum Pearson correlation with the training set",
    header="most correlated with a training image",
    symbol="r",
    value="correlation",
    method=("Akbar, Wang & Eklund, “Beware of diffusion models for synthesizing medical "
            "images” (2025)"),
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
        "copied."))


class PixelCorrelation(base.Detector):
  """Every synthetic image's k best training images by aligned pixel correlation."""

  def run(self, context):
    options = context.options
    start = time.perf_counter()
    result = search_lib.search(context.synthetic, context.train, options.k,
                               block_size=options.block_size, mesh=context.mesh,
                               precision=options.precision, progress=options.progress,
                               description="synthetic vs training",
                               memory_bytes=options.memory_bytes)
    seconds = time.perf_counter() - start
    holdout_max = context.holdout_max_correlation
    chosen = base.decide(holdout_max, context, "pixel correlation")
    return AuditResult(
        self.name, result.values, result.indices, chosen.value, chosen.description,
        chosen.rule, holdout_max_correlation=holdout_max if context.holdout is not None else None,
        zero_variance_synthetic=result.zero_variance_synthetic,
        zero_variance_train=result.zero_variance_train, seconds=seconds,
        precision=result.precision, num_devices=result.num_devices), {}


DETECTOR = PixelCorrelation(
    name="correlation", words=WORDS,
    measure="maximum Pearson correlation over all pixels/voxels and channels")
