"""Fréchet distance between two feature sets, each summarised by a Gaussian (as FID does, in our own features):

    FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from mmdit_jax.validation import ConfigError


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """FD of ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)``; ``mu: (D,)``, ``cov: (D, D)``."""
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real  # numerical noise on a PSD product; the imaginary part is ~1e-10
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD of two feature sets ``(N_a, D)``, ``(N_b, D)`` (float64 moments; N > D recommended)."""
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ConfigError(f"{name} must be (N >= 2, D), got shape {f.shape}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ConfigError(f"feature widths differ: {features_a.shape[1]} vs {features_b.shape[1]}")
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
