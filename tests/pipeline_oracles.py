"""Inference tasks written out from the package's parts, as oracles for the one ``Pipeline``."""

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.diffusion.sdedit import sdedit_ode
from mmdit_jax.pipelines.guidance import guided_net
from mmdit_jax.pipelines.images import preprocess_images, to_uint8
from mmdit_jax.pipelines.trained_model import load_trained


def sdedit_written_out(config, workdir, images: np.ndarray, prompts: list[str], strength: float,
                       seed: int) -> np.ndarray:
    """SDEdit of a trained run from its parts: CFG at ``sample.guidance_scale`` against the configured negative,
    ``sdedit_ode`` on the run's ``flow_euler`` grid (Euler) with ``N(0, I)`` from ``PRNGKey(seed)``; uint8."""
    model = load_trained(config, workdir)
    sampler, family = config.sample.sampler, model.family
    assert sampler.name == "flow_euler"
    cond = model.text.encode(prompts)
    negative = model.text.negative(config.sample.negative, cond)
    source = jnp.asarray(preprocess_images(images))

    @jax.jit
    def run(variables, source, cond, negative, key):
        net = guided_net(family, family.prepare(variables), cond, negative, float(config.sample.guidance_scale))
        noise = jax.random.normal(key, source.shape)
        return sdedit_ode(net, family.schedule, config.model_parameterization, source, noise, int(sampler.n_steps),
                          strength, "euler")

    return to_uint8(run(model.variables, source, cond, negative, jax.random.PRNGKey(seed)))
