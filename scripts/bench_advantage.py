"""Benchmark the RESTRAIN estimator against verl's GRPO and against the cost of the token tensor.

Prints two ratios on one batch (default 512 prompts x 16 rollouts x 4096 response tokens):

(a) the per-rollout computation, one vote per step (votes, pseudo-label weights, penalization,
    prompt weight, the advantage with its two parts and the pseudo-label reward: ``restrain_step``)
    over verl's own ``compute_grpo_outcome_advantage`` on the same batch; the bar is <= 0.05.
(b) the whole estimator as verl calls it (the registered ``restrain`` estimator: uid grouping, the
    per-rollout computation and the broadcast over the response mask) over the floor every
    estimator pays, writing the (N, T) token-level tensor from an (N,) vector and the response
    mask; the bar is <= 1.15. A plain ``torch.empty(N, T).fill_()`` is printed too, for reference.

Every timing is the minimum over ``--repeats`` runs, interleaved, with ``--threads`` intra-op threads
(1 by default: small ops on an oversubscribed machine otherwise measure the thread pool, not the
work).

    python scripts/bench_advantage.py
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


BAR_A = 0.05
BAR_B = 1.15


def _verdict(ratio: float, bar: float) -> str:
    return "met" if ratio <= bar else "MISSED"


def _best_of(fns: dict, repeats: int) -> dict[str, float]:
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

    import verl_restrain.adapters.plugin  # noqa: F401  (registers the estimator)
    from verl_restrain import defaults
    from verl_restrain.advantage import restrain_step

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    num_rows = args.prompts * args.rollouts
    uids = np.array([f"uid-{p}" for p in range(args.prompts) for _ in range(args.rollouts)], dtype=object)
    group_index = torch.arange(args.prompts).repeat_interleave(args.rollouts)
    answer_ids = torch.randint(-1, 6, (num_rows,), generator=generator)
    prompt_weight = torch.rand(num_rows, generator=generator)
    lengths = torch.randint(1, args.tokens + 1, (num_rows,), generator=generator)
    response_mask = (torch.arange(args.tokens).unsqueeze(0) < lengths.unsqueeze(1)).float()  # (N, T)
    token_level_rewards = torch.zeros(num_rows, args.tokens)
    token_level_rewards[torch.arange(num_rows), lengths - 1] = (answer_ids == 1).float()
    per_rollout = torch.randn(num_rows)
    params = dict(sigma=defaults.SIGMA, center=defaults.CENTER, kappa=defaults.KAPPA, delta=defaults.DELTA)
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "restrain": params | {"weighting": "gaussian"}})
    estimator = get_adv_estimator_fn("restrain")

    timings = _best_of(
        {
            "restrain_per_rollout": lambda: restrain_step(
                answer_ids, group_index, prompt_weight, weighting="gaussian", **params
            ),
            "verl_grpo": lambda: compute_grpo_outcome_advantage(token_level_rewards, response_mask, uids),
            "restrain_estimator": lambda: estimator(
                token_level_rewards=token_level_rewards,
                response_mask=response_mask,
                config=config,
                index=uids,
                answer_ids=answer_ids,
                prompt_weight=prompt_weight,
            ),
            "token_tensor_floor": lambda: per_rollout.unsqueeze(-1) * response_mask,
            "plain_fill": lambda: torch.empty(num_rows, args.tokens).fill_(1.0),
        },
        args.repeats,
    )
    ratio_a = timings["restrain_per_rollout"] / timings["verl_grpo"]
    ratio_b = timings["restrain_estimator"] / timings["token_tensor_floor"]
    print(f"batch: {args.prompts} prompts x {args.rollouts} rollouts x {args.tokens} tokens, {args.threads} thread(s)")
    for name, seconds in timings.items():
        print(f"  {name:<22} {seconds * 1e3:9.2f} ms")
    print(f"(a) per-rollout RESTRAIN / verl GRPO           = {ratio_a:.4f}  (bar <= {BAR_A}: {_verdict(ratio_a, BAR_A)})")
    print(f"(b) RESTRAIN estimator / token-tensor floor    = {ratio_b:.4f}  (bar <= {BAR_B}: {_verdict(ratio_b, BAR_B)})")
    print(f"    RESTRAIN estimator / plain fill (reference) = {timings['restrain_estimator'] / timings['plain_fill']:.4f}")
    return {"ratio_a": ratio_a, "ratio_b": ratio_b, **timings}


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["ratio_a"] <= BAR_A and result["ratio_b"] <= BAR_B else 1)
