"""Memorization audits: does a synthetic image copy a training image?

Audits images from any generator (memjax's, PyTorch's, a folder of PNGs); imports nothing from
`memjax.models` or `memjax.train`.
"""

from memjax.memorization.correlation import search_correlation
from memjax.memorization.correlation import SearchResult
from memjax.memorization.correlation import top_k_correlation

__all__ = ["SearchResult", "search_correlation", "top_k_correlation"]
