"""The maths of score-based generative modelling, model-agnostic.

Conventions (stated once, used everywhere in this package):

* **Gaussian path.** Every noise schedule is a path ``x_t = alpha(t) * x0 + sigma(t) * eps`` with
  ``eps ~ N(0, I)``; larger ``t`` means more noise. Sampling runs from ``t_max`` down to ``t_min``.
  NCSN / VE: ``alpha = 1``; VP: ``alpha^2 + sigma^2 = 1``; EDM: ``alpha = 1, sigma = t``;
  rectified flow (SD3): ``alpha = 1 - t, sigma = t``.
* **score** ``= grad_x log p_t(x)`` of the *perturbed* marginal.
* **eps** ``= E[eps | x_t]``, **x0** ``= E[x0 | x_t]`` (the denoiser ``D``).
* **velocity** ``= d x_t / dt = alpha'(t) x0 + sigma'(t) eps`` (the flow-matching velocity). For rectified
  flow this is SD3's ``v = eps - x0``. (It is *not* the "v-prediction" ``alpha eps - sigma x0`` of
  Salimans & Ho.)
* **Langevin step convention B**: ``x <- x + a * score + sqrt(2 a) * z``. The NCSN paper's convention A
  (``x <- x + a/2 * score + sqrt(a) z``) is step ``a_B = a_A / 2``.
* A network is called as ``net(x, t)`` with the schedule's own time ``t`` of shape ``(B,)``; what the
  network actually sees (``sigma``, ``1000 t``, ``log sigma / 4``) is the model wrapper's business.
* Shapes: ``x`` is ``(B, ...)`` (any trailing data shape); per-example quantities are ``(B,)``.
"""
