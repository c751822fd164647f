"""The converters' shared key check and path walk name what is wrong."""

import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.interop.trees import check_keys_match, leaf_at


def test_key_mismatch_names_missing_and_unexpected_keys():
    check_keys_match("VAE config", ["a", "b"], {"b": 1, "a": 2})
    with pytest.raises(ConfigError, match=r"VAE config: missing keys \['b'\], unexpected keys \['c'\]"):
        check_keys_match("VAE config", ["a", "b"], {"a": 1, "c": 2})
    many = {f"k{i:02d}": 0 for i in range(12)}
    with pytest.raises(ConfigError, match=r"missing keys \['k00'.*'k09'\] \.\.\., unexpected keys \[\]"):
        check_keys_match("model", list(many), {})


def test_leaf_at_walks_the_path_and_names_a_missing_part():
    params = {"a": {"b": {"kernel": 3}}}
    assert leaf_at(params, ("a", "b", "kernel"), "a.b.weight") == 3
    with pytest.raises(ConfigError, match=r"no params/a/c/kernel \(for a.c.weight\)"):
        leaf_at(params, ("a", "c", "kernel"), "a.c.weight")
