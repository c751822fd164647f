"""Evaluation: two-sample metrics for low-dimensional samples, and evaluators for the ``shapes`` data: the
attribute classifier, prompt adherence, Fréchet distance and perceptual deviation."""
