"""Report stage: figures (``phonefair.report.figures``) and the self-contained HTML report."""

from phonefair.report.html import DEMO_BANNER, write_report

__all__ = ["DEMO_BANNER", "write_report"]
