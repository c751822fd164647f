"""Inference: sampler-ready models without training state.

``text`` turns prompts into conditioning bundles (the CFG negative, pooled steering); ``components`` builds a
run's family and text path from its config, as training does; ``trained_model`` loads a training workdir's
newest EMA weights; ``sampling.SamplingPipeline`` draws samples with any sampler and guidance;
``text_to_image.SD3Pipeline`` runs a diffusers SD3 pipeline folder end to end (``flux.FluxPipeline`` and
``kontext.FluxKontextPipeline`` a FLUX.1 / Kontext folder), ``image_to_image.SD3Img2Img`` and
``inpainting.SD3Inpaint`` run SDEdit and inpainting with its components; ``latent`` holds latent training's
frozen VAE and cache; ``generator.open_source`` gives one interface over a pipeline folder and a workdir (the
``generate`` command).
"""
