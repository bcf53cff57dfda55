"""Evaluation: python -m infinity.eval shapes (prompt adherence and tokenizer fidelity on held-out scenes)."""
