"""What every checkpoint converter does between a flat state dict and a nested Flax tree: check that the keys
match, and read the leaf at a Flax path."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from mmdit_jax.checks import ConfigError


def check_keys_match(what: str, expected: Iterable[str], state_dict: Mapping[str, Any]) -> None:
    """Raise ConfigError listing (at most 10 of each) the keys ``what`` expects that ``state_dict`` lacks and the
    keys it has that ``what`` does not read."""
    expected = list(expected)
    missing = [k for k in expected if k not in state_dict]
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not match the {what}: missing keys {missing[:10]}"
                          f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                          f"{' ...' if len(unexpected) > 10 else ''}")


def leaf_at(params: Mapping[str, Any], path: tuple[str, ...], key: str) -> Any:
    """``params[path[0]][path[1]]...``; ConfigError naming the path and the state-dict ``key`` it was read for."""
    node = params
    for part in path:
        if part not in node:
            raise ConfigError(f"Flax variables have no params/{'/'.join(path)} (for {key})")
        node = node[part]
    return node
