"""mmdit_jax: score-based diffusion and multimodal diffusion transformers (SD3 / SD3.5 MMDiT, FLUX.1) in JAX/Flax.

Layers, from the bottom up (a module imports only from its own sub-package and lower layers; tests/test_layers.py):

* ``checks`` (start-up validation, ``ConfigError``), ``runtime`` (process settings made before JAX starts) and
  ``reporting`` (metrics, progress, the machine line of results);
* ``diffusion/``: the model-agnostic maths: Gaussian-path schedules, score / eps / x0 / velocity conversions,
  losses, samplers, guidance (docs/score_matching.md); ``data/``: toy distributions with exact scores, the
  built-in captioned data sets, TFDS builders, the grain input pipeline and the text-embedding cache;
  ``checkpoints`` (Orbax);
* ``models/``: Flax modules: the MMDiT (docs/mmdit.md), FLUX.1 (docs/flux.md), the KL autoencoder, the text
  encoders, small MLP / conv networks; their shared numerics (``numerics``) and FLOP / parameter counts (``flops``);
  ``adapters/``: LoRA, widening and fine-tuning from a trained run;
* ``interop/``: checkpoint conversion (diffusers, the Stability layout, Hugging Face text encoders);
* ``families/``: model families by name (``model.name``): what a model needs to be trained and sampled, and the
  plug-in record of a workdir; ``eval/``: sample metrics and the ``shapes`` evaluators;
* ``components/``: the parts of a loaded model built alike for training and inference: the family from a config,
  text stacks by name, latent codecs;
* ``setup/``: training setup of the run kinds (editing, video) and latent training's cache;
* ``pipelines/``: inference: one ``Pipeline`` over a ``LoadedModel`` from a pipeline folder or a workdir, the one
  guided net, sampling / editing / video from a workdir, the ``generate`` sources;
* ``train/``: train state, the compiled train step, the config schema (``schema``), the loop skeleton and the
  pictures a run draws;
* ``config_schema``: the experiment config read from a workdir, validated at start;
* ``harness``: what every command shares (runtime flags, one-line errors);
* ``study/``: the pooled-CLIP study (docs/pooled_clip_study.md); ``commands``: the modes
  ``train | sample | eval | export_lora``;
* ``cli``, ``generate``, ``edit``, ``train_autoencoder``: the commands.

Data flows one way: config -> data -> model -> loss -> train step -> checkpoint / samples.
"""

__version__ = "0.1.0"
