"""Training campaigns that add up across interrupted runs (`python -m infinity.campaigns`).

A campaign is a fixed plan (the runs, their flags, the total steps of each cosine) trained in segments: each
segment resumes its run from `runs/` when the folder survived, or from the shipped weights at the step the ledger
says they were exported at when it did not; after the segments it evaluates, ships what is better than what is
shipped, and appends one ledger row per segment to `benchmarks/results/`.
"""
