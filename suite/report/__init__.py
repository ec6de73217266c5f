"""The report: results and protocol accounting → tables and figures in ``paper/``.

A separate consumer: training code never imports it. ``python -m suite.report``.
"""
