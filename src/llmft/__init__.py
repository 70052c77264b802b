"""llmft: instruction-tune causal LMs with supervised fine-tuning."""

__version__ = "0.1.0"
