"""The family interface on the built-in families: config defaults from one dataclass, ``net`` equal to the module
it wraps, checkpoint converters that round-trip, FLOPs from the model's count, and registry errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mmdit import get_config as mmdit_preset
from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule, get_schedule
from mmdit_jax.families import (
    FAMILIES,
    build_family,
    family_config,
    get_family,
    model_config,
    register_family,
)
from mmdit_jax.families.mlp import MLPFamily
from mmdit_jax.families.sd3 import SD3Family
from mmdit_jax.models.flops import mmdit_forward_flops
from mmdit_jax.models.mmdit import MMDiTConfig


def _sd3(**overrides):
    fields = {k: v for k, v in mmdit_preset("tiny").items() if k != "name"}
    return build_family(family_config("sd3", **{**fields, **overrides}), RectifiedFlowSchedule(), 1000.0)


def _inputs(family, b=2, size=8, tokens=5):
    cfg = family.config
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    x = jax.random.normal(keys[0], (b, size, size, cfg.in_channels))
    cond = {"context": jax.random.normal(keys[1], (b, tokens, cfg.joint_attention_dim)),
            "pooled": jax.random.normal(keys[2], (b, cfg.pooled_projection_dim))}
    return x, cond, jax.random.uniform(keys[3], (b,))


def test_config_sections_take_every_default_from_the_family_dataclass():
    section = family_config("sd3", num_layers=3)
    defaults = {f.name: getattr(MMDiTConfig(), f.name) for f in dataclasses.fields(MMDiTConfig)}
    assert section.name == "sd3" and set(section.keys()) == {"name", *defaults}
    assert section.num_layers == 3 and all(section[k] == v for k, v in defaults.items() if k != "num_layers")
    assert model_config(section) == dataclasses.replace(MMDiTConfig(), num_layers=3)
    with pytest.raises(ConfigError, match=r"model \(sd3\) has unknown keys \['depth'\]"):
        family_config("sd3", depth=3)
    with pytest.raises(ConfigError, match="model.name='dit' is not valid"):
        get_family("dit")


def test_sd3_net_is_the_mmdit_at_timestep_scale_times_t_and_its_converters_round_trip():
    family = _sd3()
    x, cond, t = _inputs(family)
    variables = family.init(jax.random.PRNGKey(0), x, cond)
    out = family.net(family.prepare(variables), cond)(x, t)
    ref = family.module.apply(variables, x, 1000.0 * t, cond["context"], cond["pooled"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    no_pooled = family.net(variables, cond, remove_pooled=True)(x, t)
    assert float(jnp.abs(no_pooled - ref).max()) > 1e-4
    for layout in ("diffusers", "original"):
        # a bare state dict does not say the sample size the position table was built for: a folder's config.json does
        cfg, loaded = SD3Family.load_pretrained(family.export(variables, layout), sample_size=32)
        assert cfg == family.config
        for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match="layout='ckpt'"):
        family.export(variables, "ckpt")
    assert family.forward_flops(2, (8, 8, family.config.in_channels), {"context": (2, 5, 32)}) == \
        mmdit_forward_flops(family.config, 2, 8, 8, 5)


def test_a_forward_mode_loss_turns_off_hand_written_gradients():
    assert _sd3().config.custom_gradients is None
    family = build_family(family_config("sd3"), RectifiedFlowSchedule(), 1000.0, forward_mode=True)
    assert family.config.custom_gradients is False
    with pytest.raises(ConfigError, match="model.custom_gradients"):
        build_family(family_config("sd3", custom_gradients=True), RectifiedFlowSchedule(), 1000.0, forward_mode=True)


def test_mlp_family_rejects_unknown_options_and_images():
    family = build_family(family_config("mlp"), get_schedule({"name": "ncsn"}))
    variables = family.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), {})
    assert family.net(variables, {})(jnp.ones((3, 2)), jnp.full((3,), 0.5)).shape == (3, 2)
    with pytest.raises(ConfigError, match=r"no inference options \['remove_pooled'\]"):
        family.net(variables, {}, remove_pooled=True)
    with pytest.raises(ConfigError, match="vector data"):
        family.check_data((32, 32, 3))


def test_registering_a_family_under_a_taken_name_fails_and_a_new_name_works():
    with pytest.raises(ConfigError, match="already registered"):
        register_family("sd3", MLPFamily)
    try:
        register_family("mlp_alias", MLPFamily)
        assert get_family("mlp_alias") is MLPFamily
        assert family_config("mlp_alias", hidden=8).hidden == 8
    finally:
        FAMILIES.pop("mlp_alias", None)



def test_fields_left_at_none_can_be_set_from_the_command_line():
    # ml_collections' --config.<field>=... cannot retype a plain None; family_config makes such fields typed
    # placeholders, so e.g. the linear-memory attention is one flag away. The flags as the CLI parses them.
    import subprocess
    import sys

    script = ("from absl import app, flags\n"
              "from ml_collections import config_flags\n"
              "config_flags.DEFINE_config_file('config')\n"
              "def main(_):\n"
              "    m = flags.FLAGS.config.model\n"
              "    print(m.attention_impl, m.custom_gradients)\n"
              "app.run(main)\n")
    out = subprocess.run([sys.executable, "-c", script, "--config=configs/default.py:tiny",
                          "--config.model.attention_impl=chunked", "--config.model.custom_gradients=False"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["chunked", "False"]
    assert model_config(family_config("sd3", attention_impl="chunked")).attention_impl == "chunked"
    assert model_config(family_config("sd3")).attention_impl is None          # the default is still None
