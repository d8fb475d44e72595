"""The exact, streaming, sharded top-k Pearson correlation search: the pixel detector's API.

It is `search.search` with metric "correlation"; the work is done by kernels.py (plans and the
device kernels), streaming.py (blocks, read-ahead, merges), precision.py (the products) and, for
images too large for the memory budget, pieces.py (tiles along the pixels).

For every synthetic image, the k training images it correlates with most, over all pixels or voxels
and channels (Akbar, Wang & Eklund 2025). Pearson correlation is the dot product of the two images'
flattened, mean-centred, unit-norm vectors, so the search is a matrix product followed by a top-k:

* The training set streams through device memory in blocks. A background thread reads block j+1
  from its source (folder, .npy, array) while the devices compute block j (and another reads the
  next synthetic chunk); each block is split by rows over every device of the mesh, and each
  device keeps a running top-k of its rows. Only two blocks are ever in flight, so peak memory
  does not grow with the training set.
* Pixels travel in their stored dtype (uint8 images move 4x fewer bytes than float32). The
  synthetic images are centred and normalized on the device; the training tile is never rewritten:
  its mean and norm are applied to the products (see `kernels._tile_top_k`).
* The products run in float32, or as split bfloat16 products on the machine's bfloat16 matrix
  unit (AMX, tensor cores, the MXU), which carry 16 significant bits of every value (8-bit pixels
  exactly) and stay within a few 1e-6 of float32 and 1e-5 of float64: `precision="auto"` picks
  them where they are fast and a probe search on that kind of device has proven them exact. The
  split is rounded on the bits, so that no compiler rewrite of a conversion pair (XLA on GPUs
  keeps excess precision) can take its low half away.
* The kernel keeps spare candidates, and every candidate is rescored in float64 (as faiss's
  IndexRefine reranks), with a proof that the spare ones were enough (search.py): every value
  reported is the float64 correlation, and an exact copy scores 1.
* How much goes to a device at once is a `SearchBudget` (kernels.py): cache-sized tiles on CPUs;
  on GPUs and TPUs tiles and chunks of thousands of rows for the matrix units, blocks staged
  through pinned host memory, and a training set that fits kept on the device across synthetic
  chunks.
* Each device works through its rows in tiles of a fixed shape (`tile_size` rows). A matrix
  product's rounding depends on its shapes, so fixed tiles make every correlation bitwise the same
  whatever the block size or the number of devices. (The tile size follows from the training set's
  size and shape, the synthetic chunk from the synthetic set's; the last bit of a value can change
  with those, never with the layout of the work.)
* Per tile, the top-k is found exactly without sorting the whole score tile: the maximum of each
  group of 64 consecutive training images first (a cheap vectorized reduction), then an exact top-k
  over the members of the k best groups. Ties go to the lower training index.
* An image with zero variance (or a non-finite pixel) has no correlation: a synthetic one gets NaN
  values and index -1, a training one is never matched, and both are reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from memjax.memorization import search as search_lib
# The search's parts, where a user of this module finds them.
from memjax.memorization.kernels import accelerator_budget  # noqa: F401
from memjax.memorization.kernels import CPU_BUDGET  # noqa: F401
from memjax.memorization.kernels import plan_search  # noqa: F401
from memjax.memorization.kernels import search_budget  # noqa: F401
from memjax.memorization.kernels import SearchBudget  # noqa: F401
from memjax.memorization.precision import PRECISIONS  # noqa: F401
from memjax.memorization.precision import resolve_precision  # noqa: F401
from memjax.memorization.search import SPARE_CANDIDATES  # noqa: F401
from memjax.memorization.search import SearchResult


def search_correlation(synthetic: Any, train: Any, k: int = 1, **kwargs) -> SearchResult:
  """The exact top-k Pearson correlation search: `search.search(..., metric="correlation")`.

  `synthetic` and `train` are arrays (N, *image_shape), `ImageSource`s or paths (folders, .npy,
  .npz); the keyword arguments are `search.search`'s.
  """
  return search_lib.search(synthetic, train, k, metric="correlation", **kwargs)


def top_k_correlation(synthetic: Any, train: Any, k: int = 1, *, block_size: int | None = None,
                      mesh: Mesh | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """For every synthetic image, its k most correlated training images, exactly.

  Returns (values, indices), both (N_synthetic, k): Pearson correlations descending (float64
  values; 1 for an exact copy), and int64 indices into `train`. A synthetic image
  with zero variance has NaN values and indices -1; a training image with zero variance is never
  matched.
  """
  result = search_correlation(synthetic, train, k, block_size=block_size, mesh=mesh, **kwargs)
  return result.values, result.indices
