"""Weight conversion (numpy + safetensors, no torch): SD3 / SD3.5 MMDiT checkpoints in the diffusers and Stability
layouts (docs/mmdit.md §2), and Hugging Face CLIP / T5 text-encoder folders."""
