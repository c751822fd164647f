"""Training setup, below ``mmdit_jax.train`` and beside the inference layer: the training tasks (``tasks``: what
kind of run a config is, and everything training asks of that kind), the maths of the editing and video sections
(``editing``, ``video``) and latent training's encoded-image cache (``latent_cache``).
"""
