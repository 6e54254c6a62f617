"""The ``restrain`` advantage estimator in verl's estimator signature (``algorithm.adv_estimator=restrain``).

verl's own advantage step calls a registered estimator with ``token_level_rewards``,
``response_mask``, ``config`` and ``index`` only; the RESTRAIN advantage also needs every rollout's
answer cluster and its prompt's weight u_x. The ``restrain`` trainer (:mod:`verl_restrain.adapters.trainer`)
computes the whole step itself from one vote (:func:`verl_restrain.advantage.restrain_step`); this
estimator is the same computation for callers that pass ``answer_ids`` (and ``prompt_weight``), and
tells a stock trainer, which cannot, which trainer to use.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.utils.groupwise import as_torch_index

from verl_restrain import defaults
from verl_restrain.adapters.registration import registered
from verl_restrain.adapters.settings import ESTIMATOR_NAME, RestrainConfig
from verl_restrain.advantage import broadcast_to_tokens, compute_restrain_advantage

__all__ = ["compute_restrain_outcome_advantage"]

MISSING_ANSWERS = (
    "the 'restrain' advantage estimator needs each rollout's answer cluster (answer_ids), which only "
    "the RESTRAIN trainer provides: set trainer.v1.trainer_mode=restrain (with "
    "reward.reward_manager.name=restrain) when algorithm.adv_estimator=restrain"
)


@registered("advantage estimator", "verl.trainer.ppo.core_algos", "ADV_ESTIMATOR_REGISTRY", "register_adv_est", ESTIMATOR_NAME)
def compute_restrain_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: Any = None,
    answer_ids: torch.Tensor | None = None,
    prompt_weight: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RESTRAIN advantages, broadcast over each response's tokens.

    Args:
        token_level_rewards: (N, T); not read (RESTRAIN's signal is the votes), kept for verl's signature.
        response_mask: (N, T) mask of response tokens.
        config: verl's ``algorithm`` config: ``algorithm.restrain`` (:class:`RestrainConfig`) and
            ``norm_adv_by_std_in_grpo``.
        index: (N,) prompt uid of each rollout.
        answer_ids: (N,) int64 answer cluster of each rollout within its prompt group, -1 for none.
        prompt_weight: (N,) u_x of each rollout's prompt, or None for 1.

    Returns:
        (advantages, returns), both (N, T) and equal, zero on masked tokens.

    Raises:
        ValueError: without ``answer_ids`` (verl's stock trainers cannot provide them) or ``index``.
    """
    if answer_ids is None:
        raise ValueError(MISSING_ANSWERS)
    if index is None:
        raise ValueError("the 'restrain' advantage estimator needs the prompt uid of each rollout (index)")
    restrain = RestrainConfig.from_algorithm(config)
    advantage = compute_restrain_advantage(
        answer_ids.cpu(),
        as_torch_index(index, device="cpu"),
        None if prompt_weight is None else prompt_weight.cpu(),
        weighting=restrain.weighting,
        sigma=restrain.sigma,
        center=restrain.center,
        kappa=restrain.kappa,
        delta=restrain.delta,
        norm_adv_by_std=True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True)),
        epsilon=defaults.EPSILON,
    )  # (N,)
    scores = broadcast_to_tokens(advantage.to(response_mask.device), response_mask)  # (N, T)
    return scores, scores
