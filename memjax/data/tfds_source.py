"""Kept for the callers that import `memjax.data.tfds_source` (tests/test_data_brats.py,
tests/test_data_mni152.py): `TfdsSource` now lives in `memjax.data.sources.tfds`, and
`memjax.data.sources` re-exports it; import it from there.
"""

from memjax.data.sources.tfds import TfdsSource  # pylint: disable=unused-import

__all__ = ["TfdsSource"]
