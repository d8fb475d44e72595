"""Memorization audits: does a synthetic image copy a training image?

Audits images from any generator (memjax's, PyTorch's, a folder of PNGs); imports nothing from
`memjax.models` or `memjax.train`. The detectors: the maximum Pearson correlation over all pixels
(`search_correlation`), the correlation of contrastive embeddings (`search_embeddings`, given
embeddings or a function that embeds images), and the established measures on pixels or
embeddings (`calibrated_l2`, `authenticity`, `data_copying_test`), all on one exact
nearest-neighbour search (`search.search`, "correlation" or "l2"); `run_audit` writes the audit
of one or both detectors; `validate` measures how well each detector finds planted copies.
"""

from memjax.memorization.audit import run_audit
from memjax.memorization.correlation import search_correlation
from memjax.memorization.correlation import SearchResult
from memjax.memorization.correlation import top_k_correlation
from memjax.memorization.detectors import authenticity
from memjax.memorization.detectors import calibrated_l2
from memjax.memorization.detectors import data_copying_test
from memjax.memorization.embedding import embed
from memjax.memorization.embedding import EmbeddingSearchResult
from memjax.memorization.embedding import search_embeddings
from memjax.memorization.validation import plant_copies
from memjax.memorization.validation import validate

__all__ = [
    "EmbeddingSearchResult", "SearchResult", "authenticity", "calibrated_l2",
    "data_copying_test", "embed", "plant_copies", "run_audit",
    "search_correlation", "search_embeddings", "top_k_correlation", "validate",
]
