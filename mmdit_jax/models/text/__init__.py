"""Text encoders written in Flax (transformers 5 ships no Flax models): CLIP and T5 v1.1, their tokenizers,
Hugging Face weight loading, and the SD3 assembly of the conditioning (c, y_pooled)."""
