"""Experiments that measure the paper's claims with the project's own trainer and evaluators
(`python -m infinity.experiments claims`)."""
