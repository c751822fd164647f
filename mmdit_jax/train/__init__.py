"""Training: the optimizer and train state, the jit-compiled sharded train step of any model family, the experiment
config's schema and its start-up validation (``schema``), the loop skeleton (``loop.run_steps``) shared by the
diffusion trainer and the VAE trainer with Orbax checkpoints and metrics, the pictures a run draws (``pictures``),
and a scan-compiled fitter for small models (``fit``)."""
