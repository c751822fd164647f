"""Flax Linen modules, pure functions of (params, inputs): the SD3 / SD3.5 MMDiT and its layers, embeddings and
parameter layouts (docs/mmdit.md), the text encoders (``text/``), a noise-conditional MLP and a small conv tower."""
