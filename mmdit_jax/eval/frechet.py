"""Fréchet distance between two feature sets, each summarised by a Gaussian (as FID does, in our own features):

    FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})
"""

from __future__ import annotations

import numpy as np

from mmdit_jax.checks import ConfigError


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """FD of ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)``; ``mu: (D,)``, ``cov: (D, D)``.

    ``tr (S_a S_b)^{1/2} = tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}``: the symmetric form stays exact for singular
    covariances (dead feature dimensions), where a general matrix square root is ill-conditioned.
    """
    root_a = _psd_sqrt(cov_a)
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.sum(np.sqrt(np.clip(inner, 0.0, None))))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD of two feature sets ``(N_a, D)``, ``(N_b, D)`` (float64 moments; N > D recommended)."""
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ConfigError(f"{name} must be (N >= 2, D), got shape {f.shape}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ConfigError(f"feature widths differ: {features_a.shape[1]} vs {features_b.shape[1]}")
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
