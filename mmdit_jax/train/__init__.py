"""Training: the optimizer and train state, the jit-compiled sharded train step of any model family, the training
loop with Orbax checkpoints, metrics and sample grids, and a scan-compiled fitter for small models (``fit``)."""
