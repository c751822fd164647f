"""Inference: sampler-ready models without training state, and the tasks run on them.

``loaded.LoadedModel`` bundles a family, its variables, text stack, latent codec and sampling grid;
``folders.load_folder`` builds one from a diffusers pipeline folder of any registered family (per-family
``FolderSpec``), ``trained_model.load_trained`` from a training workdir's newest EMA weights.
``guidance.guided_net`` is the one home of classifier-free guidance (CFG, true CFG, two-scale, skip-layer
guidance, steering of both halves); ``pipeline.Pipeline`` runs text-to-image, image-to-image, inpainting and
reference editing (``tasks``) on a folder; ``sampling.SamplingPipeline``, ``editing.EditingPipeline`` and
``video.VideoPipeline`` sample, edit and roll out clips from a workdir with any sampler of the core;
``generator.open_source`` gives the ``generate`` command one interface over both; ``images`` holds the one
``[-1, 1] <-> uint8`` conversion.
"""
