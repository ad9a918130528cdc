"""The values CostEff's choice options take, in one place for the configuration, the library and the CLI.

Standard library only, and imported by ``configuration_costeff`` with a relative import: the CLI parser reads it
without importing torch or transformers (``hf-costeff --help`` answers in a fraction of a second), and it travels to
the Hub with the two code files (``trust_remote_code`` fetches a code file's relative imports).
"""

# How an example decides to leave at an exit; "none" runs every layer.
EARLY_EXIT_CRITERIA = ("entropy", "confidence", "patience")
EXIT_CRITERIA = (*EARLY_EXIT_CRITERIA, "none")
# An exit's head: BERT's pooler (dense + tanh on the pooled vector) or COST-EFF's tanh-only pooler.
EXIT_POOLERS = ("dense", "tanh")
# The token(s) an exit reads: [CLS], or the mean of the real tokens (sentence-transformers checkpoints).
EXIT_POOLINGS = ("cls", "mean")
# Whose loss an importance estimate follows: every exit's (COST-EFF) or the last exit's only.
EXIT_WEIGHTINGS = ("all", "final")
# Weight quantizations of an ONNX export (dynamic int8: matrix-product weights int8, activations quantized on the fly).
QUANTIZATIONS = ("int8",)

__all__ = ["EARLY_EXIT_CRITERIA", "EXIT_CRITERIA", "EXIT_POOLERS", "EXIT_POOLINGS", "EXIT_WEIGHTINGS", "QUANTIZATIONS"]
