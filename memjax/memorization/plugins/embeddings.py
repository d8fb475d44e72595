"""The embedding detector, "embedding": the maximum Pearson correlation of a contrastive
encoder's embeddings (Dar et al. 2023), thresholded by the same rule as the pixel detector."""

from __future__ import annotations

import time

from memjax.memorization import embedding as embedding_lib
from memjax.memorization.plugins import base
from memjax.memorization.result import AuditResult

WORDS = dict(
    name="embedding correlation",
    histogram_title="The highest correlation of embeddings",
    axis="maximum Pearson correlation of embeddings with the training set",
    header="whose embeddings are most correlated with a training image's",
    symbol="embedding r",
    method=("Dar et al., “Investigating data memorization in 3D latent diffusion models "
            "for medical image synthesis” (2023)"),
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
        "with tools/validate_detectors.py on planted copies."))


class EmbeddingCorrelation(base.Detector):
  """Every synthetic image's k best training images by the correlation of their embeddings."""

  def run(self, context):
    options = context.options
    start = time.perf_counter()
    embedded = embedding_lib.search_embeddings(
        context.synthetic, context.train, context.holdout, embed_fn=context.embed_fn,
        k=options.k, threshold=options.threshold,
        holdout_percentile=options.holdout_percentile, mesh=context.mesh,
        precision=options.precision, progress=options.progress)
    chosen = embedded.threshold
    if context.holdout is not None:
      chosen = base.check_limit(chosen, context.holdout, "embedding")
    encoder = options.encoder_description or getattr(context.embed_fn, "description", None)
    vectors = {"synthetic": embedded.synthetic_embeddings, "train": embedded.train_embeddings}
    if embedded.holdout_embeddings is not None:
      vectors["holdout"] = embedded.holdout_embeddings
    return AuditResult(
        self.name, embedded.values, embedded.indices, chosen.value, chosen.description,
        chosen.rule, holdout_max_correlation=embedded.holdout_max,
        zero_variance_synthetic=embedded.zero_variance_synthetic,
        zero_variance_train=embedded.zero_variance_train,
        seconds=time.perf_counter() - start, precision=embedded.precision,
        num_devices=embedded.num_devices, encoder=encoder), {"embeddings.npz": vectors}


DETECTOR = EmbeddingCorrelation(
    name="embedding", words=WORDS, needs_encoder=True,
    measure=("maximum Pearson correlation of contrastive embeddings (Dar et al. 2023; 1 minus "
             "their 'correlation' distance)"))
