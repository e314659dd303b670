"""Report stage: the self-contained HTML report, its figures (PNG/SVG/PDF) and the headline tables (LaTeX/CSV/Parquet).

See docs/report.md for every section, quantity and caveat.
"""

from phonefair.report.html import DEMO_BANNER, SECTIONS, write_report

__all__ = ["DEMO_BANNER", "SECTIONS", "write_report"]
