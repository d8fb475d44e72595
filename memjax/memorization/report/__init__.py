"""The memorization report pages: the audit (one or two detectors) and the demo's comparison.

Readers are researchers and privacy officers deciding whether synthetic images may leave a
hospital, so every figure says what it shows: the threshold and how it was chosen, the images
that have no correlation (zero variance), which slice or channel of an image is drawn, and, on
request, no training pixels at all (redaction.py: one policy for every page).

  text.py        the words: what each detector measures, values as text
  planes.py      what of an image is drawn, as PNG bytes; data URIs
  slices.py      slice order (from the source, or inferred from trailing slice numbers in ids)
  redaction.py   the redaction policy
  figures.py     histograms (whole and zoomed to the threshold), the detectors' agreement, the
                 intensity scatter plot
  pairs_figure.py  pairs.png
  sections.py    pair rows, pairs at the threshold, the flagged table, the data table
  render.py      Jinja2 (autoescaped) over templates/*.html.j2, atomic writes
  audit_page.py, comparison_page.py  the two pages
"""

from memjax.memorization.report.audit_page import write_audit_report
from memjax.memorization.report.comparison_page import ModelAudit
from memjax.memorization.report.comparison_page import write_comparison_report
from memjax.memorization.report.figures import agreement_figure
from memjax.memorization.report.figures import bin_edges
from memjax.memorization.report.figures import DPI
from memjax.memorization.report.figures import draw_density
from memjax.memorization.report.figures import figure_to_png_bytes
from memjax.memorization.report.figures import HISTOGRAM_SIZE_IN
from memjax.memorization.report.figures import histogram_figure
from memjax.memorization.report.figures import intensity_scatter
from memjax.memorization.report.figures import MAX_SCATTER_POINTS
from memjax.memorization.report.pairs_figure import pairs_figure
from memjax.memorization.report.pairs_figure import PAIRS_HEADER_HEIGHT_IN
from memjax.memorization.report.pairs_figure import PAIRS_ROW_HEIGHT_IN
from memjax.memorization.report.pairs_figure import PAIRS_WIDTH_IN
from memjax.memorization.report.pairs_figure import top_pairs
from memjax.memorization.report.planes import display_note
from memjax.memorization.report.planes import display_plane
from memjax.memorization.report.planes import embed_png
from memjax.memorization.report.planes import pearson
from memjax.memorization.report.redaction import WITHHOLD_LEVEL
from memjax.memorization.report.text import FIXED_THRESHOLDS
from memjax.memorization.report.text import flatten_summary
from memjax.memorization.report.text import format_value

__all__ = [
    "DPI", "FIXED_THRESHOLDS", "HISTOGRAM_SIZE_IN", "MAX_SCATTER_POINTS",
    "ModelAudit", "PAIRS_HEADER_HEIGHT_IN", "PAIRS_ROW_HEIGHT_IN", "PAIRS_WIDTH_IN",
    "WITHHOLD_LEVEL", "agreement_figure", "bin_edges", "display_note", "display_plane",
    "draw_density", "embed_png", "figure_to_png_bytes", "flatten_summary", "format_value",
    "histogram_figure", "intensity_scatter", "pairs_figure", "pearson", "top_pairs",
    "write_audit_report", "write_comparison_report",
]
