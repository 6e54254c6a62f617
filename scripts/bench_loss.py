"""Benchmark the per-label RESTRAIN policy loss against verl's vanilla PPO policy loss.

Both run forward plus backward, with their metrics, on the same tensors: (rows, tokens) = (512, 4096)
by default, 32 prompts x 16 rollouts whose parts (P, N) come from a gaussian-weighted vote
(:func:`verl_restrain.advantage.restrain_step`), verl's loss on the combined advantage P + N, token-mean
aggregation over the batch, and log-ratios spread so that both clips and the dual clip are active.
Prints the ratio restrain_policy_loss / verl vanilla, the minimum over ``--repeats`` interleaved runs,
against the bar <= 1.25 (met/MISSED) and exits 1 when it is missed.

    python scripts/bench_loss.py
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

BAR = 1.25


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512, help="responses in the micro-batch")
    parser.add_argument("--tokens", type=int, default=4096, help="response length T")
    parser.add_argument("--rollouts", type=int, default=16, help="rollouts per prompt")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from verl_restrain import defaults
    from verl_restrain.advantage import restrain_step
    from verl_restrain.loss import restrain_policy_loss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    rows, tokens = args.rows, args.tokens
    group_index = torch.arange(rows) // args.rollouts
    answer_ids = torch.randint(-1, 5, (rows,), generator=generator)
    step = restrain_step(
        answer_ids, group_index, torch.rand(rows, generator=generator), weighting="gaussian", sigma=defaults.SIGMA,
        center=defaults.CENTER, kappa=defaults.KAPPA, delta=defaults.DELTA,
    )
    lengths = torch.randint(1, tokens + 1, (rows,), generator=generator)
    response_mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).to(device)  # (B, T) bool

    def per_token(values: torch.Tensor) -> torch.Tensor:
        return (values.unsqueeze(-1) * response_mask.cpu()).to(device)  # (B, T)

    positive, negative, combined = per_token(step.positive), per_token(step.negative), per_token(step.advantage)
    old_log_prob = (-torch.rand(rows, tokens, generator=generator) * 3.0).to(device)
    # Log-ratios with a spread of 0.6: about a third of the tokens outside [0.8, 1.28], some beyond c = 3.
    log_prob = (old_log_prob + 0.6 * torch.randn(rows, tokens, generator=generator).to(device)).requires_grad_()
    clip = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    batch_info = dict(dp_size=1, batch_num_tokens=int(response_mask.sum()), global_batch_size=rows, loss_scale_factor=None)
    verl_config = OmegaConf.create(dict(clip_ratio=0.2, **clip, global_batch_info=batch_info))
    vanilla = get_policy_loss_fn("vanilla")

    def run_verl() -> None:
        log_prob.grad = None
        loss, _ = vanilla(old_log_prob, log_prob, combined, response_mask, "token-mean", verl_config)
        loss.backward()

    def run_restrain() -> None:
        log_prob.grad = None
        loss, _ = restrain_policy_loss(
            old_log_prob, log_prob, positive, negative, response_mask, loss_agg_mode="token-mean", **clip, **batch_info
        )
        loss.backward()

    fns = {"verl_vanilla": run_verl, "restrain_per_label": run_restrain}
    for fn in fns.values():  # warm-up: allocator, kernels
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], _timed(fn, device))
    ratio = best["restrain_per_label"] / best["verl_vanilla"]
    threads = f", {args.threads} thread(s)" if device.type == "cpu" else ""
    print(f"policy loss, forward + backward: {rows} x {tokens} tokens on {device}{threads}, best of {args.repeats}")
    for name, seconds in best.items():
        print(f"  {name:<20} {seconds * 1e3:9.2f} ms")
    verdict = "met" if ratio <= BAR else "MISSED"
    print(f"restrain_policy_loss / verl vanilla = {ratio:.3f}  (bar <= {BAR}: {verdict})")
    return {"ratio": ratio, **best}


if __name__ == "__main__":
    sys.exit(0 if main()["ratio"] <= BAR else 1)
