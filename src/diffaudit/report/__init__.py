"""The audit report: results.json, tidy CSVs, PNG plots, a self-contained report.html and summary.md.

`write_report(out_dir, results, samples, images=None)` writes the folder; `summary_table(results)`
is the plain-text table the CLI prints. `diffaudit.report.sentences` phrases numbers with CIs.
"""
from .tables import summary_table
from .writer import rewrite_report, write_report

__all__ = ["write_report", "rewrite_report", "summary_table"]
