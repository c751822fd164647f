"""The CLIP-removal ablation at training time: the MMDiT without the pooled-text path (y = e_t, no h_y).

Identical to configs/default.py otherwise, so the two runs differ only in the conditioning vector.
"""

from configs.default import get_config as default_config


def get_config(arg: str = ""):
    c = default_config(arg)
    c.model.use_pooled = False
    return c
