"""The conditioning vector ``y`` of the transformers (SD3's MMDiT, FLUX) and the interventions on it.

    y = e_t(t) [+ e_g(g)] + h_y(p)                                    (B, D)
    y = e_t(t) [+ e_g(g)]                                             remove_pooled, or a model without h_y
    y = e_t(t) [+ e_g(g)] + h_y(p) + w (h_y(p+) - h_y(p-))            pooled_steering = (p+, p-, w)

``e_t = MLP(timestep_features(t))`` with ``t`` in the model's units (SD3: ``1000 t``), ``e_g`` the same for the
guidance scale of a guidance-distilled model (FLUX.1-dev: ``1000 g``), ``h_y = MLP(p)`` the pooled text projection
``(B, d_pool) -> (B, D)``. ``y`` drives every adaLN modulation, so it is the one place where the pooled text vector
enters (the pooled-CLIP study, docs/pooled_clip_study.md).

Steering is ``ŷ(p, p+, p-, t) = y(p, t) + w (y(p+, t) - y(p-, t))``: ``e_t`` and ``e_g`` cancel in the difference,
so it needs no new parameters and applies to any model with the pooled path, converted checkpoints included;
``w = 0`` is ``y`` exactly.

``Interventions`` bundles the study switches a model call takes as one argument: ``remove_pooled``,
``pooled_steering`` (these two act on ``y``, here) and ``skip_layers`` (blocks bypassed by the model's block loop).
It is a pytree whose switches are static (they change the program) and whose steering arrays are data.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError
from mmdit_jax.models.embeddings import MLPEmbedder, timestep_features

Array = jax.Array
Dtype = Any


class PooledSteering(NamedTuple):
    """``(p+, p-, w)``: ``y += w (h_y(p+) - h_y(p-))``; ``p± (B, d_pool)``, ``w (B,)`` or a scalar."""

    plus: Array
    minus: Array
    weight: Array | float


@flax.struct.dataclass
class Interventions:
    """The study switches of one model call (module docstring). ``Interventions()`` is the model unchanged."""

    remove_pooled: bool = flax.struct.field(pytree_node=False, default=False)
    skip_layers: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    pooled_steering: PooledSteering | None = None

    @classmethod
    def of(cls, remove_pooled: bool = False, skip_layers: Sequence[int] = (),
           pooled_steering: Sequence[Any] | None = None) -> "Interventions":
        """From plain values: ``skip_layers`` as sorted ints, ``pooled_steering`` any ``(p+, p-, w)`` sequence."""
        if pooled_steering is not None:
            if len(pooled_steering) != 3:
                raise ConfigError("pooled_steering must be (pooled_plus, pooled_minus, w)")
            pooled_steering = PooledSteering(*pooled_steering)
        return cls(bool(remove_pooled), tuple(sorted({int(i) for i in skip_layers})), pooled_steering)

    @classmethod
    def merge(cls, interventions: "Interventions | None", **switches: Any) -> "Interventions":
        """``interventions``, or the same built from keyword switches (``remove_pooled=``, ``skip_layers=``,
        ``pooled_steering=``), so ``model.apply(..., remove_pooled=True)`` keeps working; not both."""
        unknown = sorted(set(switches) - {"remove_pooled", "skip_layers", "pooled_steering"})
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; the interventions are remove_pooled, "
                            "skip_layers and pooled_steering")
        if interventions is not None and switches:
            raise ConfigError(f"give the interventions either as interventions=Interventions(...) or as keywords "
                              f"{sorted(switches)}, not both")
        return interventions if interventions is not None else cls.of(**switches)


NONE = Interventions()


def check_conditioning(interventions: Interventions, pooled: Array | None, guidance: Array | None, batch: int,
                       pooled_dim: int, has_pooled: bool = True, guidance_embeds: bool = False,
                       pooled_switch: str | None = None) -> None:
    """Raise ConfigError where ``y`` cannot be formed as asked: ``pooled (B, d_pool)`` missing or misshapen while
    the pooled path is read, ``guidance`` missing for a guidance-distilled model, an intervention on a pooled path
    that is absent or removed (it would silently sample the unchanged model). ``pooled_switch`` names the config
    field that gives a model its pooled path (SD3: ``model.use_pooled``; None where every model has one)."""
    if interventions.remove_pooled and not has_pooled:
        raise ConfigError(f"remove_pooled=True on a model without a pooled path ({pooled_switch}=False: y = e_t "
                          f"already); remove_pooled applies to models with {pooled_switch}=True")
    reads_pooled = has_pooled and not interventions.remove_pooled
    if reads_pooled and (pooled is None or pooled.shape != (batch, pooled_dim)):
        raise ConfigError(f"pooled must be (B, {pooled_dim}) for model.pooled_projection_dim={pooled_dim}, got "
                          f"{None if pooled is None else pooled.shape}")
    if guidance_embeds and guidance is None:
        raise ConfigError("model.guidance_embeds=True (a guidance-distilled model) needs a guidance scale per "
                          "example (conditioning entry 'guidance', shape (B,))")
    steering = interventions.pooled_steering
    if steering is not None:
        if not reads_pooled:
            needs = f"{pooled_switch}=True and remove_pooled=False" if pooled_switch else "remove_pooled=False"
            raise ConfigError(f"pooled_steering needs the pooled path: {needs}")
        for name, v in zip(("pooled_plus", "pooled_minus"), steering[:2]):
            if v.shape != (batch, pooled_dim):
                raise ConfigError(f"pooled_steering {name} must be (B, {pooled_dim}), got {v.shape}")


def conditioning_vector(timestep: Array, pooled: Array | None, *, hidden: int, dtype: Dtype, param_dtype: Dtype,
                        has_pooled: bool = True, pooled_dim: int = 0, guidance: Array | None = None,
                        interventions: Interventions = NONE, initializing: bool = False) -> Array:
    """``y (B, D)`` (module docstring) from ``timestep (B,)`` and ``guidance (B,)`` in the model's units and
    ``pooled (B, d_pool)``; ``guidance=None``: no ``e_g`` term.

    Called inside a model's compact ``__call__``: the embedders it makes are the model's own submodules
    (``timestep_embedder``, ``guidance_embedder``, ``text_embedder``), so parameter trees and converted
    checkpoints are unchanged. ``initializing``: the model's ``is_initializing()``; ``h_y``'s parameters are made
    even when ``remove_pooled`` leaves them unread, so one init serves every intervention.
    """
    mlp = lambda name: MLPEmbedder(hidden, dtype, param_dtype, name=name)  # noqa: E731
    y = mlp("timestep_embedder")(timestep_features(timestep).astype(dtype))
    if guidance is not None:
        y = y + mlp("guidance_embedder")(timestep_features(guidance).astype(dtype))
    if not has_pooled:
        return y
    h_y = mlp("text_embedder")
    if not interventions.remove_pooled:
        y = y + h_y(pooled.astype(dtype))
        if interventions.pooled_steering is not None:
            plus, minus, w = interventions.pooled_steering
            w = jnp.broadcast_to(jnp.asarray(w, dtype), (y.shape[0],))
            y = y + w[:, None] * (h_y(plus.astype(dtype)) - h_y(minus.astype(dtype)))
    elif initializing:
        h_y(jnp.zeros((y.shape[0], pooled_dim), dtype))
    return y
