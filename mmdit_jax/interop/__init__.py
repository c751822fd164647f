"""Weight conversion to and from diffusers / Stability / Hugging Face folders (numpy + safetensors, no torch)."""
