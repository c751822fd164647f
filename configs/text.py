"""SD3 text conditioning: which encoders, their sizes (presets) or local Hugging Face folders, max lengths,
and the independent per-encoder drop probabilities used in training for classifier-free guidance.

``get_config("sd3")``: real encoders, loaded from local folders you fill in (`path`, `tokenizer_path`).
``get_config("tiny")`` (default): tiny random encoders with the built-in tokenizers; runs offline anywhere.
``get_config("toy_clip")``: the tiny CLIP towers contrastively pretrained on ``shapes`` (shipped in
``mmdit_jax/models/text/assets/toy_clip``; how they were made: its ``summary.json``), no T5.
"""

import ml_collections


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    enc = lambda preset, n: ml_collections.ConfigDict(  # noqa: E731
        dict(enabled=True, preset=preset, path="", tokenizer_path="", max_length=n))
    if arg == "sd3":
        c.clip_l, c.clip_g, c.t5 = enc("clip_l14", 77), enc("clip_g14", 77), enc("t5_xxl", 256)
        c.joint_dim = 4096
    elif arg == "toy_clip":
        from mmdit_jax.models.text.tokenizer_assets import TOY_CLIP_DIRS

        c.clip_l, c.clip_g, c.t5 = enc("clip_tiny", 77), enc("clip_tiny_g", 77), enc("t5_small", 0)
        for k in ("clip_l", "clip_g"):
            c[k].path = c[k].tokenizer_path = TOY_CLIP_DIRS[k]
        c.t5.enabled = False
        c.joint_dim = 96       # = the CLIP widths 32 + 64
    elif arg == "tiny":
        c.clip_l, c.clip_g, c.t5 = enc("clip_tiny", 77), enc("clip_tiny_g", 77), enc("t5_small", 32)
        c.joint_dim = 128      # = the T5's d_model, >= the CLIP widths 32 + 64
    else:
        raise ValueError(f"configs/text.py: unknown argument {arg!r}; valid: 'tiny', 'toy_clip', 'sd3'")
    c.drop_probs = (0.464, 0.464, 0.464)     # SD3: each encoder dropped independently with p = 46.4%
    return c
