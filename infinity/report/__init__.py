"""The figures of README.md and docs/, generated from the result files (benchmarks/results/, docs/claims/).

A measured figure in a page sits between markers, `<!-- figures: NAME -->` ... `<!-- /figures -->` (a whole
table, a paragraph, or a few words inside a sentence); `python -m infinity.report` rewrites every block from its
generator in `infinity.report.figures`, and tests/test_report.py fails when a committed page differs from what
its files say. A new table: one generator function registered in `figures.GENERATORS`, one marker pair.
"""
