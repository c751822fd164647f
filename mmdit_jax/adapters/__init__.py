"""Parameter-efficient adapters on the model families' parameter trees (LoRA)."""
