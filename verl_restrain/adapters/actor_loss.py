"""The paper's objective in verl's actor: the PPO clip inside each candidate label's loss.

``algorithm.restrain.clip_mode=per_label`` (the default). The trainer writes, besides verl's
``advantages`` (the combined u_x sum_j w_j A_ij, which verl's metrics read), the two parts
``restrain_positive_advantages`` and ``restrain_negative_advantages`` of every rollout
(:func:`verl_restrain.advantage.restrain_step`), and installs :func:`restrain_ppo_loss` in the actor
with verl's own ``set_loss_fn``, the way verl's trainer installs the critic's loss. For a batch that
carries the parts it hands verl's unchanged ``ppo_loss`` the two parts stacked as the advantage and
the registered policy loss :func:`compute_policy_loss_per_label` as ``policy_loss.loss_mode``;
everything else of verl's actor loss stays verl's: the KL and entropy terms, loss aggregation,
global-batch normalisation, rollout-correction weights and metrics. One forward and one backward
per micro-batch, as before. A batch without the parts gets verl's ``ppo_loss`` itself.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from verl_restrain.adapters.registration import registered
from verl_restrain.adapters.settings import POLICY_LOSS_NAME
from verl_restrain.loss import restrain_policy_loss

__all__ = ["NEGATIVE_FIELD", "POSITIVE_FIELD", "compute_policy_loss_per_label", "per_label_config", "restrain_ppo_loss"]

POSITIVE_FIELD = "restrain_positive_advantages"
"""Per-token field of P_i = u sum_{j: A_ij > 0} w_j A_ij (>= 0)."""
NEGATIVE_FIELD = "restrain_negative_advantages"
"""Per-token field of N_i = u sum_{j: A_ij < 0} w_j A_ij (<= 0)."""


@registered("policy loss", "verl.trainer.ppo.core_algos", "POLICY_LOSS_REGISTRY", "register_policy_loss", POLICY_LOSS_NAME)
def compute_policy_loss_per_label(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's policy-loss signature over ``advantages`` (B, T, 2): the parts (P, N) stacked last.

    The clip settings are verl's (``clip_ratio``, ``clip_ratio_low``/``high``, ``clip_ratio_c``) and
    the aggregation uses ``config.global_batch_info``, as verl's vanilla loss does.
    """
    if advantages.dim() != 3 or advantages.shape[-1] != 2:
        raise ValueError(
            f"policy loss {POLICY_LOSS_NAME!r} takes the advantage parts stacked as (B, T, 2), got shape "
            f"{tuple(advantages.shape)}; it is installed by the restrain trainer and is not a loss_mode to set by hand"
        )
    clip_ratio = config.clip_ratio
    clip_ratio_low = config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio
    clip_ratio_high = config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio
    return restrain_policy_loss(
        old_log_prob,
        log_prob,
        advantages[..., 0],
        advantages[..., 1],
        response_mask,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=config.get("clip_ratio_c", 3.0),
        loss_agg_mode=loss_agg_mode,
        rollout_is_weights=rollout_is_weights,
        **config.global_batch_info,
    )


def per_label_config(actor_config: Any) -> Any:
    """A shallow copy of verl's actor config whose policy loss is :func:`compute_policy_loss_per_label`.

    The copy shares ``global_batch_info`` with ``actor_config``, which ``ppo_loss`` fills per micro-batch.
    """
    config = copy.copy(actor_config)
    policy_loss = copy.copy(actor_config.policy_loss)
    object.__setattr__(policy_loss, "loss_mode", POLICY_LOSS_NAME)
    object.__setattr__(config, "policy_loss", policy_loss)
    return config


def restrain_ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None, *, per_label: Any = None):
    """The actor loss the restrain trainer installs (``functools.partial`` over both configs).

    Args:
        config: verl's actor config (``ActorConfig``), as verl's ``ppo_loss`` takes it.
        model_output, data, dp_group: as verl's ``ppo_loss``; ``data`` is the micro-batch TensorDict.
        per_label: :func:`per_label_config` of ``config``.
    """
    from verl.workers.utils.losses import ppo_loss

    if POSITIVE_FIELD not in data.keys():
        return ppo_loss(config, model_output, data, dp_group)
    data = data.copy()
    data["advantages"] = _stack_parts(data[POSITIVE_FIELD], data[NEGATIVE_FIELD])
    return ppo_loss(per_label, model_output, data, dp_group)


def _stack_parts(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(B, T) parts -> (B, T, 2), for nested (jagged, one row per rollout) and padded tensors alike."""
    if not positive.is_nested:
        return torch.stack([positive, negative], dim=-1)
    # Two jagged tensors from separate puts have separate ragged structures; stack their values.
    if not torch.equal(positive.offsets(), negative.offsets()):
        raise ValueError("the advantage parts of a micro-batch have different response lengths")
    values = torch.stack([positive.values(), negative.values()], dim=-1)  # (total tokens, 2)
    offsets = positive.offsets()
    # The longest row sets the padded width, as it does for the other fields of the micro-batch.
    max_seqlen = int(offsets.diff().max()) if offsets.numel() > 1 else 0
    return torch.nested.nested_tensor_from_jagged(values, offsets, max_seqlen=max_seqlen)
