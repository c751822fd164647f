"""mmdit_jax: score-based diffusion and the SD3 MMDiT in JAX/Flax.

Layers, from the bottom up (a module imports only from its own sub-package and lower layers; tests/test_layers.py):

* ``checks`` (start-up validation, ``ConfigError``), ``runtime`` (process settings made before JAX starts) and
  ``reporting`` (metrics, progress, the machine line of results);
* ``diffusion/``: the model-agnostic maths: Gaussian-path schedules, score / eps / x0 / velocity conversions,
  losses, samplers, guidance (docs/score_matching.md); ``data/``: toy distributions with exact scores, the
  built-in captioned data sets, TFDS builders, the grain input pipeline and the text-embedding cache;
  ``checkpoints`` (Orbax);
* ``models/``: Flax modules: the MMDiT (docs/mmdit.md), the text encoders, small MLP / conv networks;
* ``interop/``: checkpoint conversion (diffusers, the Stability layout, Hugging Face text encoders);
* ``families/``: model families by name (``model.name``): what a model needs to be trained and sampled;
  ``eval/``: sample metrics and the ``shapes`` evaluators (attribute classifier, adherence, deviation);
* ``pipelines/``: inference: a trained model from a workdir, text conditioning, sampling;
* ``train/``: train state, the compiled train step, the training loop;
* ``config_schema``: the experiment config's sections, validated at start;
* ``study/``: the pooled-CLIP study (docs/pooled_clip_study.md); ``commands``: the modes
  ``train | sample | eval``;
* ``cli``: ``python -m mmdit_jax --config=... --workdir=... --mode=...``.

Data flows one way: config -> data -> model -> loss -> train step -> checkpoint / samples.
"""

__version__ = "0.1.0"
