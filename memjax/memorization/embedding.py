"""The embedding detector of Dar et al.: nearest training images by correlation of embeddings.

Dar et al. (2023, code Cardio-AI/memorization-ldm) embed the training, held-out and synthetic
images with a self-supervised contrastive encoder, measure `cdist(..., 'correlation')` (1 -
Pearson correlation) between embeddings, and call a synthetic image a copy when it is nearer to a
training image than the 5th percentile of each training image's distance to its nearest held-out
image. In correlations: a copy has a best correlation at or above the 95th percentile of each
training image's best correlation with the held-out set, the rule `detectors.holdout_threshold`
applies to pixels.

An embedding is a row of D numbers, so the search is the pixel search of `correlation.py` on
(N, D) arrays: exact, streaming and sharded, with the same top-k, tie rule and report of rows
without a correlation (a constant embedding). This module imports nothing from `memjax.models` or
`memjax.train`: it takes embeddings, or a function that embeds a batch of images (for a memjax
encoder, `memjax.train.contrastive.load_embedder`), so it audits embeddings of any encoder.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any

import numpy as np
from jax.sharding import Mesh

from memjax.data import sources as sources_lib
from memjax.memorization import search as search_lib
from memjax.memorization import detectors

# Images as a source reads them (N, *shape), in their stored dtype -> embeddings (N, D).
EmbedFunction = Callable[[np.ndarray], np.ndarray]

DEFAULT_BATCH_SIZE = 256

# What the threshold descriptions say was compared.
SIMILARITY = ("correlation of embeddings (1 minus Dar et al.'s 'correlation' distance between "
              "embeddings)")


def embed(images: Any, embed_fn: EmbedFunction, *, batch_size: int = DEFAULT_BATCH_SIZE,
          progress: bool = False, description: str = "embedding") -> np.ndarray:
  """Embeddings (N, D) float32 of `images` (an `ImageSource`, array, folder, file or tfds: name).

  The images are read `batch_size` at a time in their stored dtype (uint8 stays uint8), so a
  training set of any size streams through `embed_fn`; only the embeddings are kept.

  Raises:
    ValueError: when `embed_fn` returns the wrong number of rows, rows of differing sizes, or
      NaN or infinite values (naming the first such image).
  """
  source = sources_lib.open_source(images)
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  chunks = []
  with tqdm(total=len(source), desc=description, unit="img", disable=not progress,
            dynamic_ncols=True) as bar:
    for start in range(0, len(source), batch_size):
      stop = min(start + batch_size, len(source))
      block = np.asarray(embed_fn(source.read(start, stop, dtype=None)))
      if block.ndim != 2 or block.shape[0] != stop - start:
        raise ValueError(f"the embedding function returned shape {block.shape} for "
                         f"{stop - start} images of {source.description}; expected "
                         f"({stop - start}, D)")
      if chunks and block.shape[1] != chunks[0].shape[1]:
        raise ValueError(f"the embedding function returned {block.shape[1]} dimensions for "
                         f"images {start}-{stop} of {source.description}, "
                         f"{chunks[0].shape[1]} before")
      bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
      if bad.size:
        raise ValueError(f"the embedding of {source.image_id(start + int(bad[0]))} in "
                         f"{source.description} has NaN or infinite values "
                         f"({bad.size} of images {start}-{stop}); check the encoder's checkpoint")
      chunks.append(block.astype(np.float32))
      bar.update(stop - start)
  if not chunks:
    raise ValueError(f"{source.description} holds no images to embed")
  return np.concatenate(chunks)


@dataclasses.dataclass(frozen=True)
class EmbeddingSearchResult:
  """What the embedding detector found.

  values: (N_synthetic, k) float64 Pearson correlations of embeddings, descending (1 - Dar et
    al.'s 'correlation' distance); NaN where undefined (a constant embedding).
  indices: (N_synthetic, k) int64 into the training set; -1 where values is NaN.
  threshold: the decision rule (the holdout rule when a holdout set was given, else fixed).
  memorized: (N_synthetic,) bool, values[:, 0] >= threshold.value.
  holdout_max: (N_train,) each training image's best embedding correlation with the holdout set
    (what the threshold is the percentile of); None without a holdout set.
  synthetic_embeddings, train_embeddings, holdout_embeddings: the (N, D) float32 embeddings
    searched (holdout None without a holdout set), for reports and further measures.
  zero_variance_synthetic, zero_variance_train: indices of constant embeddings (no correlation).
  """
  values: np.ndarray
  indices: np.ndarray
  threshold: detectors.Threshold
  memorized: np.ndarray
  holdout_max: np.ndarray | None
  synthetic_embeddings: np.ndarray
  train_embeddings: np.ndarray
  holdout_embeddings: np.ndarray | None
  zero_variance_synthetic: np.ndarray
  zero_variance_train: np.ndarray
  precision: str = "float32"
  num_devices: int = 1

  @property
  def max_correlation(self) -> np.ndarray:
    """(N_synthetic,) each synthetic image's best embedding correlation with the training set."""
    return self.values[:, 0]


def _as_embeddings(data: Any, embed_fn: EmbedFunction | None, batch_size: int, progress: bool,
                   role: str) -> np.ndarray:
  if embed_fn is not None:
    return embed(data, embed_fn, batch_size=batch_size, progress=progress,
                 description=f"embedding {role}")
  array = np.asarray(data)
  if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"the {role} embeddings must be a float (N, D) array, got {array.dtype} "
                     f"{array.shape}; pass embed_fn to embed images")
  if not np.isfinite(array).all():
    raise ValueError(f"the {role} embeddings have NaN or infinite values")
  return array.astype(np.float32, copy=False)


def _as_rows(embeddings: np.ndarray, role: str) -> sources_lib.ArraySource:
  """(N, D) embeddings as a source of N one-row "images" (1, D), which the pixel search reads."""
  return sources_lib.ArraySource(embeddings[:, None, :], description=f"{role} embeddings")


def embedding_threshold(holdout_max: np.ndarray, percentile: float = 95.0,
                        num_holdout: int | None = None) -> detectors.Threshold:
  """Dar et al.'s rule on embeddings: `detectors.holdout_threshold`, described as embeddings."""
  return detectors.holdout_threshold(holdout_max, percentile, num_holdout,
                                     similarity=SIMILARITY)


def search_embeddings(synthetic: Any, train: Any, holdout: Any = None, *,
                      embed_fn: EmbedFunction | None = None, k: int = 5,
                      threshold: float = 0.95, holdout_percentile: float = 95.0,
                      mesh: Mesh | None = None, precision: str = "auto",
                      batch_size: int = DEFAULT_BATCH_SIZE, block_size: int | None = None,
                      progress: bool = False) -> EmbeddingSearchResult:
  """Each synthetic image's k nearest training images by Pearson correlation of embeddings.

  With `embed_fn`, `synthetic`, `train` and `holdout` are images (anything `open_source` opens)
  and are embedded first, `batch_size` at a time; without it they are (N, D) float embeddings.
  With `holdout` the threshold is Dar et al.'s (the `holdout_percentile` of each training image's
  best embedding correlation with the holdout set), else the fixed `threshold`. `mesh`,
  `precision` and `block_size` are the correlation search's (`search.search`).
  """
  if holdout is None:
    detectors.fixed_threshold(threshold)
  else:
    detectors.check_percentile(holdout_percentile)
  train_embeddings = _as_embeddings(train, embed_fn, batch_size, progress, "training")
  synthetic_embeddings = _as_embeddings(synthetic, embed_fn, batch_size, progress, "synthetic")
  holdout_embeddings = None
  if holdout is not None:
    holdout_embeddings = _as_embeddings(holdout, embed_fn, batch_size, progress, "holdout")
  for role, array in (("synthetic", synthetic_embeddings), ("holdout", holdout_embeddings)):
    if array is not None and array.shape[1] != train_embeddings.shape[1]:
      raise ValueError(f"the {role} embeddings have {array.shape[1]} dimensions, the training "
                       f"embeddings {train_embeddings.shape[1]}; embed both with one encoder")

  result = search_lib.search(
      _as_rows(synthetic_embeddings, "synthetic"), _as_rows(train_embeddings, "training"), k,
      block_size=block_size, mesh=mesh,
      precision=precision, progress=progress, description="synthetic vs training embeddings",
      names=("synthetic embeddings", "training embeddings"))
  holdout_max = None
  if holdout_embeddings is not None:
    calibration = search_lib.search(
        _as_rows(train_embeddings, "training"), _as_rows(holdout_embeddings, "holdout"), 1,
        block_size=block_size, mesh=mesh,
        precision=precision, progress=progress, description="training vs holdout embeddings",
        names=("training embeddings", "holdout embeddings"))
    holdout_max = calibration.values[:, 0]
    chosen = embedding_threshold(holdout_max, holdout_percentile, len(holdout_embeddings))
  else:
    chosen = detectors.fixed_threshold(threshold, similarity=SIMILARITY)
  return EmbeddingSearchResult(
      values=result.values, indices=result.indices, threshold=chosen,
      memorized=detectors.is_memorized(result.values[:, 0], chosen.value),
      holdout_max=holdout_max, synthetic_embeddings=synthetic_embeddings,
      train_embeddings=train_embeddings, holdout_embeddings=holdout_embeddings,
      zero_variance_synthetic=result.zero_variance_synthetic,
      zero_variance_train=result.zero_variance_train, precision=result.precision,
      num_devices=result.num_devices)
