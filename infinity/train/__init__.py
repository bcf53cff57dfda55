"""Training code for the tokenizer and the transformer (python -m infinity.train --help)."""
