"""Training setup, below ``mmdit_jax.train`` and beside the inference layer: what a run kind adds to training
(editing: ``editing``; video: ``video``) and latent training's encoded-image cache (``latent_cache``).
"""
