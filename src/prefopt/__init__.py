"""prefopt: offline preference optimisation of language models (f-PO, γ-PO and their baselines) in one library."""

__version__ = "0.1.0"
