"""mmdit_jax: score-based diffusion and the SD3 MMDiT in JAX/Flax.

Data flows one way: config -> data -> model -> loss -> train step -> checkpoint / samples.
`mmdit_jax.diffusion` holds the model-agnostic maths and never imports `mmdit_jax.models`.
"""

__version__ = "0.1.0"
