"""The parts a loaded model is made of, built identically for training and inference: the model family from
the config (``from_config``), the text stack that turns prompts into conditioning (``text``) and the latent
codec (``codec``). This layer sits below both ``mmdit_jax.train`` / ``mmdit_jax.setup`` and
``mmdit_jax.pipelines``: it imports neither.
"""
