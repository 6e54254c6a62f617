"""The sandbox policy: one shared preference per reasoning route, over many synthetic prompts.

Every prompt p has K candidate answers, exactly one of them correct. Each candidate is reached by
one *route*: route 0 is sound reasoning and reaches only the correct answer; routes 1..m are
shortcuts (a sign slip, an off-by-one, a misread question, ...) and each wrong candidate is reached
by one of them, drawn at random (or, with ``errors="systematic"``, every prompt's most likely wrong
answer by the same shortcut). The policy is a softmax over the candidates,

    pi(a | p) = softmax_a( theta[route(p, a)] + b(p, a) ),    theta: (1 + m,) shared, b: (P, K) fixed,

i.e. logits = features(p, a) . theta + b(p, a) with one-hot route features. ``theta`` starts at 0,
so the initial policy is ``softmax(b)``, and ``b`` sets each prompt's difficulty: the wrong
candidates get Gaussian logits (std ``wrong_logit_std``), and the correct candidate's logit is set so
that its initial probability is ``q_p``, drawn uniformly from ``accuracy_range``. Prompts with large
``q_p`` are easy (correct majority); small ``q_p`` gives hard prompts whose majority is wrong (one
dominant wrong "trap" when a Gaussian draw is high) or split (no answer stands out), and near the
low end the correct answer is rare but present. Training moves only ``theta``, so reinforcing an
answer on one prompt moves every answer on the same route on every other prompt: rewarding a wrong
majority reached by shortcut k raises shortcut k everywhere and lowers the sound route everywhere.
That coupling is what lets wrong majorities on hard prompts drag easy prompts down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ERROR_STRUCTURES = ("random", "systematic")

__all__ = [
    "ERROR_STRUCTURES",
    "PromptSetConfig",
    "PromptSet",
    "RoutePolicy",
    "make_prompts",
    "sample_candidates",
    "first_appearance_ids",
    "entropy",
]


@dataclass(frozen=True)
class PromptSetConfig:
    """How a synthetic prompt set is drawn (see the module docstring).

    Attributes:
        num_prompts: P.
        num_candidates: K candidate answers per prompt, one correct.
        num_shortcuts: m wrong routes shared by all prompts.
        accuracy_range: (low, high) of the uniform draw of q_p, the initial pi(correct | p).
        wrong_logit_std: std of the wrong candidates' logits; larger means more concentrated errors.
        errors: ``random``: every wrong candidate's shortcut is drawn uniformly from 1..m.
            ``systematic``: each prompt's most likely wrong answer (its trap) is reached by the same
            shortcut 1, "the common mistake", and its other wrong answers by shortcuts 2..m; a
            trap rewarded on one prompt then raises the trap of every prompt.

    The defaults were fixed from the environment alone, before any method was run: K = 16 lets a
    hard prompt's wrong answers scatter as free-form answers do; q_p ~ U(0.02, 0.5) makes the
    initial policy's majority of 16 samples right on about half of the prompts (a hard training
    set, the regime in which the paper reports TTRL's collapse), with a mean pass@1 of about 0.26.
    """

    num_prompts: int = 256
    num_candidates: int = 16
    num_shortcuts: int = 4
    accuracy_range: tuple[float, float] = (0.02, 0.5)
    wrong_logit_std: float = 1.0
    errors: str = "random"

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2, got {self.num_candidates}")
        if self.num_shortcuts < 1:
            raise ValueError(f"num_shortcuts must be >= 1, got {self.num_shortcuts}")
        low, high = self.accuracy_range
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"accuracy_range must satisfy 0 < low <= high < 1, got {self.accuracy_range}")
        if not self.wrong_logit_std >= 0:
            raise ValueError(f"wrong_logit_std must be >= 0, got {self.wrong_logit_std}")
        if self.errors not in ERROR_STRUCTURES:
            raise ValueError(f"errors must be one of {ERROR_STRUCTURES}, got {self.errors!r}")
        if self.errors == "systematic" and self.num_shortcuts < 2:
            raise ValueError("systematic errors need num_shortcuts >= 2 (the trap's route and the others)")


@dataclass(frozen=True)
class PromptSet:
    """P synthetic prompts with K candidates each."""

    route: torch.Tensor  # (P, K) int64, 0 = sound route (the correct candidate), 1..m shortcuts
    bias: torch.Tensor  # (P, K) float64, b(p, a)
    correct: torch.Tensor  # (P,) int64, index of the correct candidate
    num_routes: int  # 1 + m

    @property
    def num_prompts(self) -> int:
        return self.bias.shape[0]


def make_prompts(config: PromptSetConfig, generator: torch.Generator) -> PromptSet:
    """Draw a prompt set; the correct candidate sits at a random position so ties favour no one."""
    num_prompts, num_candidates = config.num_prompts, config.num_candidates
    low, high = config.accuracy_range
    accuracy = low + (high - low) * torch.rand(num_prompts, generator=generator, dtype=torch.float64)  # (P,)
    wrong_logits = config.wrong_logit_std * torch.randn(
        num_prompts, num_candidates - 1, generator=generator, dtype=torch.float64
    )  # (P, K-1)
    # pi(correct) = q  <=>  b_correct = logit(q) + logsumexp(wrong logits).
    correct_logit = torch.logit(accuracy) + torch.logsumexp(wrong_logits, dim=1)  # (P,)
    shortcut = torch.randint(1, config.num_shortcuts + 1, (num_prompts, num_candidates - 1), generator=generator)
    if config.errors == "systematic":
        others = torch.randint(2, config.num_shortcuts + 1, (num_prompts, num_candidates - 1), generator=generator)
        is_trap = torch.zeros_like(others, dtype=torch.bool)
        is_trap.scatter_(1, wrong_logits.argmax(dim=1, keepdim=True), True)
        shortcut = torch.where(is_trap, 1, others)  # (P, K-1)

    # Column 0 holds the correct candidate before a random per-prompt permutation of the columns.
    bias = torch.cat([correct_logit[:, None], wrong_logits], dim=1)  # (P, K)
    route = torch.cat([torch.zeros(num_prompts, 1, dtype=torch.long), shortcut], dim=1)  # (P, K)
    order = torch.argsort(torch.rand(num_prompts, num_candidates, generator=generator), dim=1)  # (P, K)
    bias = torch.gather(bias, 1, order)
    route = torch.gather(route, 1, order)
    correct = torch.argmin(order, dim=1)  # where original column 0 landed
    return PromptSet(route=route, bias=bias, correct=correct, num_routes=1 + config.num_shortcuts)


class RoutePolicy(torch.nn.Module):
    """pi(a | p) = softmax_a(theta[route(p, a)] + b(p, a)), with theta shared by all prompts."""

    def __init__(self, num_routes: int) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(num_routes, dtype=torch.float64))  # (R,)

    def logits(self, prompts: PromptSet) -> torch.Tensor:
        """(P, K) logits."""
        return prompts.bias + self.theta[prompts.route]

    def log_probs(self, prompts: PromptSet) -> torch.Tensor:
        """(P, K) log pi(a | p)."""
        return torch.log_softmax(self.logits(prompts), dim=1)


def sample_candidates(log_probs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw n candidates per prompt by inverting the CDF of pi(. | p).

    One uniform per rollout, so two policies sampled with the same generator state share their
    random numbers (paired comparisons between methods).

    Args:
        log_probs: (P, K).
        n: rollouts per prompt.

    Returns:
        (P, n) int64 candidate indices.
    """
    cdf = torch.cumsum(log_probs.detach().exp(), dim=1)  # (P, K)
    uniform = torch.rand(log_probs.shape[0], n, generator=generator, dtype=cdf.dtype)  # (P, n)
    # The last CDF entry may round below 1: clamp so a uniform above it still maps to candidate K-1.
    return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp(max=log_probs.shape[1] - 1)


def first_appearance_ids(sampled: torch.Tensor) -> torch.Tensor:
    """Answer ids numbered as :func:`verl_restrain.answers.cluster_extracted` numbers clusters.

    The id of a rollout is the position of the first rollout of its prompt with the same answer,
    so ids increase in order of first appearance and majority ties go to the answer sampled first,
    exactly as in training.

    Args:
        sampled: (P, n) candidate indices.

    Returns:
        (P, n) int64 answer ids.
    """
    same = sampled[:, :, None] == sampled[:, None, :]  # (P, n, n)
    return same.to(torch.uint8).argmax(dim=2)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """(P,) entropy of pi(. | p) in nats."""
    return -(log_probs.exp() * log_probs).sum(dim=1)
