"""The report: one self-contained HTML page per run, re-rendered from the results database.

``write_report(run_dir)`` writes ``report.html`` and ``results.json``; :mod:`.plots` draws
the figures (matplotlib on an Agg canvas, embedded as base64 PNG).
"""
from advlab.report import plots  # noqa: F401
from advlab.report.html import render, write_report  # noqa: F401
