"""Self-training loop of the sandbox: every method trains the same policy with the same randomness.

One step, for one method:

1. sample n rollouts per training prompt from the current policy (:func:`policy.sample_candidates`);
2. turn the sampled candidates into ``answer_ids`` (numbered by first appearance, as training's
   answer clustering does) and the prompts into ``group_index``;
3. build the method's advantages with :func:`verl_restrain.advantage.compute_restrain_advantage`,
   the function training uses (looked up on the module at call time, never copied);
4. take one REINFORCE step on the loss ``-mean_i A_i log pi(a_i | p_i)`` with Adam (the optimizer
   verl's actor uses) or plain SGD. PPO's ratio clip and a KL term are left out: with fresh
   on-policy samples at every step the ratio is 1 and the clip never binds, and the comparison is
   about the advantages. The choice of optimizer matters here: Adam divides each parameter's step
   by the running size of its gradient, so a method that scales all advantages down (RESTRAIN's
   prompt weights, mean u_x ~ 0.3 on a hard prompt set) loses nothing by it; under SGD the same
   scaling is a smaller learning rate.

Negative penalization gives every rollout of a prompt the same advantage -u delta. Over all
samples that has zero expected gradient (E_a[grad log pi(a | p)] = 0), but the penalty applies
only when the sample came out scattered (M < kappa), and such a sample over-represents the tail of
pi(. | p): pushing all its answers down moves mass from the tail to the most likely answers. So a
penalised prompt stops voting and, through delta, is mildly sharpened towards its current mode.

Methods are the presets of :data:`verl_restrain.methods.METHODS` (``srt_online`` is the same preset
as ``ttrl`` and is left out, and so are ETTRL's, whose advantage reshaping reads token entropies
this policy over whole answers does not have) plus ``gold_grpo``: GRPO on the gold reward, written as the same
estimator with a fixed label (``fixed_label_answer_ids(sampled == gold)``, majority weighting,
kappa = 0). Gold labels enter no other method; they only measure.

Why ``uniform_weighting`` collapses. The estimator sums per-label GRPO advantages, each divided by
its own label's std, sqrt(c_j (n - c_j) / (n (n - 1))), which is smallest for the rarest answers.
Under uniform weights w_j = 1 / m every label has the same weight, so that division alone decides
the sign, and the rare answers get the largest positive advantage. With answer counts
{8, 4, 1, 1, 1, 1} at n = 16 (m = 6, std 0.516, 0.447 and 0.25), each rollout of the 8-vote
majority gets about -0.098, each of the 4-vote answer -0.049 and each single vote +0.245: the
update rewards diversity, entropy rises and pass@1 falls. Negative penalization at kappa = 4 does
not stop it: it silences a prompt only once fewer than kappa rollouts agree, and a prompt with a
clear majority, like this one, is still pushed apart (a larger kappa silences more prompts, which is
why it rescues RESTRAIN at sigma = 0.8 in the sweep). Without the division (``norm_adv_by_std=False``)
uniform weighting gives every rollout exactly 0 when each has an answer:
1 / m - (1 / m) sum_j c_j / n = 1 / m - 1 / m. Gaussian weighting avoids the collapse only while
g(f) = exp(-(f - center)^2 / (2 sigma^2)) rises with f steeply enough to outweigh the smaller std of
rare answers: with center 1 and sigma 0.4 the same counts give the majority +0.319 and a
single vote -0.392. As sigma grows g flattens over [0, 1] (at sigma 1.6, g(1/16) / g(8/16) = 0.88),
the weights approach 1 / m and the advantages approach uniform weighting's (majority -0.081, single
vote +0.212 at sigma 1.6; already -0.019 and +0.101 at sigma 0.8), so RESTRAIN collapses the same
way; ``restrain-sandbox --sweep sigma`` shows it.

RESTRAIN's prompt weight u_x = g(M_ref / n) and SRT-offline's fixed label (the majority answer)
come from one sample of n rollouts per prompt from the initial policy, drawn once per seed;
``online_prompt_weight`` recomputes u = g(M / n) from each step's own vote instead.

Every method of one seed uses the same prompt set, the same reference sample and a training
generator restarted from the same seed, so step 0 sees identical rollouts and the comparison is
paired. The prompt set and the training randomness both change with the seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from verl_restrain import advantage, defaults
from verl_restrain.methods import METHODS
from verl_restrain.sandbox.policy import (
    PromptSet,
    PromptSetConfig,
    RoutePolicy,
    entropy,
    first_appearance_ids,
    make_prompts,
    sample_candidates,
)

__all__ = [
    "GOLD_GRPO",
    "SANDBOX_METHODS",
    "METRICS",
    "DEFAULT_LR",
    "Optimizer",
    "SandboxConfig",
    "Reference",
    "SeedSetup",
    "make_setup",
    "method_advantage",
    "run_method",
    "run",
    "single_thread",
]

GOLD_GRPO = "gold_grpo"
# srt_online is the ttrl preset under another name; running it twice adds nothing.
SANDBOX_METHODS = (GOLD_GRPO,) + tuple(
    name for name, method in METHODS.items() if name != "srt_online" and method.advantage_reshaping is None
)

METRICS = {
    "pass1_train": "pass@1 on the training prompts, E_p pi(gold | p)",
    "pass1_heldout": "pass@1 on held-out prompts from the same distribution",
    "majority_accuracy": "share of training prompts whose majority of the step's n rollouts is the gold answer",
    "penalized_share": "share of training prompts the method penalises (M < kappa; 0 when it does not penalise)",
    "entropy": "mean entropy of pi(. | p) over the training prompts, nats",
}

_ENV_STREAM, _REFERENCE_STREAM, _TRAIN_STREAM = 0, 1, 2

DEFAULT_LR = {"adam": 0.02, "sgd": 0.1}


@dataclass(frozen=True)
class SandboxConfig:
    """Everything one sandbox run depends on.

    Attributes:
        steps: policy-gradient steps per method.
        n: rollouts per prompt at each step, and for the reference sample.
        optimizer: ``adam`` (betas 0.9, 0.999, eps 1e-8, as torch's defaults) or ``sgd``.
        lr: learning rate on theta. It sets the clock, and was chosen per optimizer on gold-label
            GRPO alone: held-out pass@1 reaches 0.9 around step 100 of 200, so every method has
            time to settle (adam 0.02; sgd 0.1, see :data:`DEFAULT_LR`).
        sigma, center, kappa, delta: RESTRAIN hyperparameters (defaults from
            :mod:`verl_restrain.defaults`).
        prompts: how the training prompt set is drawn.
        num_heldout: held-out prompts drawn from the same distribution, for evaluation only.
        seeds: one paired run of every method per seed.
        methods: names from :data:`SANDBOX_METHODS`.
    """

    steps: int = 200
    n: int = defaults.NUM_ROLLOUTS
    optimizer: str = "adam"
    lr: float | None = None
    sigma: float = defaults.SIGMA
    center: float = defaults.CENTER
    kappa: int = defaults.KAPPA
    delta: float = defaults.DELTA
    prompts: PromptSetConfig = field(default_factory=PromptSetConfig)
    num_heldout: int = 256
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = SANDBOX_METHODS

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.n < 2:
            raise ValueError(f"n must be >= 2, got {self.n}")
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {tuple(DEFAULT_LR)}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.num_heldout < 1:
            raise ValueError(f"num_heldout must be >= 1, got {self.num_heldout}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if not self.methods:
            raise ValueError("methods must not be empty")
        unknown = [name for name in self.methods if name not in SANDBOX_METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(SANDBOX_METHODS)}")
        # The estimator validates sigma, center, kappa and delta too, but only once training starts.
        advantage.shaping(0.0, self.sigma, self.center)
        if self.kappa < 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")
        if not self.delta >= 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """What the frozen initial policy says about each training prompt (offline scoring's analogue)."""

    majority_count: torch.Tensor  # (P,) int64, M_ref over n samples
    majority_answer: torch.Tensor  # (P,) int64, candidate index of the majority answer
    prompt_weight: torch.Tensor  # (P,) float32, u_x = g(M_ref / n)


@dataclass(frozen=True)
class SeedSetup:
    """The prompt sets and reference statistics shared by every method of one seed."""

    seed: int
    train: PromptSet
    heldout: PromptSet
    reference: Reference


class Optimizer:
    """Adam or SGD on one parameter tensor, minimising the loss whose gradient is passed.

    Adam is written out (Kingma & Ba, 2015, with bias correction and torch's default betas and
    eps) because the first step of ``torch.optim`` imports ``torch._dynamo``, which takes seconds
    on a small CPU; a test checks it against ``torch.optim.Adam``.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, kind: str, lr: float, parameter: torch.Tensor) -> None:
        self.kind, self.lr, self.parameter = kind, lr, parameter
        self.first = torch.zeros_like(parameter, requires_grad=False)
        self.second = torch.zeros_like(parameter, requires_grad=False)
        self.count = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        if self.kind == "sgd":
            self.parameter -= self.lr * grad
            return
        beta1, beta2 = self.BETAS
        self.count += 1
        self.first.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        first = self.first / (1 - beta1**self.count)
        second = self.second / (1 - beta2**self.count)
        self.parameter -= self.lr * first / (second.sqrt() + self.EPS)


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent torch generator for each (seed, stream) pair."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _group_index(num_prompts: int, n: int) -> torch.Tensor:
    return torch.arange(num_prompts).repeat_interleave(n)  # (P * n,)


def _majority(sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Majority count and majority candidate of each prompt's rollouts, via the package's vote count.

    Args:
        sampled: (P, n) candidate indices.

    Returns:
        (P,) majority count M and (P,) candidate index of the majority answer.
    """
    num_prompts, n = sampled.shape
    votes = advantage.count_votes(first_appearance_ids(sampled).reshape(-1), _group_index(num_prompts, n))
    in_majority = (votes.cluster == votes.majority_cluster[votes.group]).reshape(num_prompts, n)  # (P, n)
    first_in_majority = in_majority.to(torch.uint8).argmax(dim=1)  # (P,)
    return votes.majority_count, sampled.gather(1, first_in_majority[:, None]).squeeze(1)


def make_setup(config: SandboxConfig, seed: int) -> SeedSetup:
    """Draw the training and held-out prompts and the initial policy's reference sample."""
    env = _generator(seed, _ENV_STREAM)
    train = make_prompts(config.prompts, env)
    heldout = make_prompts(replace(config.prompts, num_prompts=config.num_heldout), env)
    with torch.no_grad():
        initial = RoutePolicy(train.num_routes).log_probs(train)
    sampled = sample_candidates(initial, config.n, _generator(seed, _REFERENCE_STREAM))
    majority_count, majority_answer = _majority(sampled)
    weight = advantage.prompt_weight(majority_count, config.n, config.sigma, config.center)
    return SeedSetup(seed, train, heldout, Reference(majority_count, majority_answer, weight))


def method_advantage(name: str, sampled: torch.Tensor, setup: SeedSetup, config: SandboxConfig) -> torch.Tensor:
    """The advantage of every rollout under method ``name``.

    Args:
        name: one of :data:`SANDBOX_METHODS`.
        sampled: (P, n) candidate indices of this step's rollouts.

    Returns:
        (P * n,) float32 advantages, rows in the order of ``sampled.reshape(-1)``.
    """
    num_prompts, n = sampled.shape
    group_index = _group_index(num_prompts, n)
    if name == GOLD_GRPO:
        matches = sampled == setup.train.correct[:, None]  # (P, n)
        answer_ids = advantage.fixed_label_answer_ids(matches.reshape(-1))
        return advantage.compute_restrain_advantage(
            answer_ids,
            group_index,
            None,
            weighting="majority",
            sigma=config.sigma,
            center=config.center,
            kappa=0,
            delta=config.delta,
        )

    method = METHODS[name]
    if method.label_mode == "offline":
        matches = sampled == setup.reference.majority_answer[:, None]  # (P, n)
        answer_ids = advantage.fixed_label_answer_ids(matches.reshape(-1))
    else:
        answer_ids = first_appearance_ids(sampled).reshape(-1)
    offline = method.use_prompt_weight and method.prompt_weight_source == "offline"
    weight = setup.reference.prompt_weight.repeat_interleave(n) if offline else None
    return advantage.compute_restrain_advantage(
        answer_ids,
        group_index,
        weight,
        weighting=method.weighting,
        sigma=config.sigma,
        center=config.center,
        kappa=method.kappa(config.kappa),
        delta=config.delta,
        online_prompt_weight=method.use_prompt_weight and method.prompt_weight_source == "online",
    )


def _method_kappa(name: str, kappa: int) -> int:
    return 0 if name == GOLD_GRPO else METHODS[name].kappa(kappa)


def run_method(name: str, setup: SeedSetup, config: SandboxConfig) -> dict[str, list[float]]:
    """Train a fresh policy with method ``name``; return each metric of :data:`METRICS` per step.

    Metrics are taken at steps 0..steps (step 0 is the initial policy, the last one is after the
    final update), so every list has ``steps + 1`` entries.
    """
    with single_thread():
        return _train(name, setup, config)


def _train(name: str, setup: SeedSetup, config: SandboxConfig) -> dict[str, list[float]]:
    policy = RoutePolicy(setup.train.num_routes)
    optimizer = Optimizer(config.optimizer, config.lr, policy.theta)
    generator = _generator(setup.seed, _TRAIN_STREAM)
    train, heldout = setup.train, setup.heldout
    rows = torch.arange(train.num_prompts)
    heldout_rows = torch.arange(heldout.num_prompts)
    method_kappa = _method_kappa(name, config.kappa)
    history: dict[str, list[float]] = {metric: [] for metric in METRICS}

    for step in range(config.steps + 1):
        log_probs = policy.log_probs(train)  # (P, K)
        sampled = sample_candidates(log_probs, config.n, generator)  # (P, n)
        with torch.no_grad():
            majority_count, majority_answer = _majority(sampled)
            heldout_log_probs = policy.log_probs(heldout)
            history["pass1_train"].append(log_probs[rows, train.correct].exp().mean().item())
            history["pass1_heldout"].append(heldout_log_probs[heldout_rows, heldout.correct].exp().mean().item())
            history["majority_accuracy"].append((majority_answer == train.correct).double().mean().item())
            history["penalized_share"].append((majority_count < method_kappa).double().mean().item())
            history["entropy"].append(entropy(log_probs).mean().item())
        if step == config.steps:
            break

        estimate = method_advantage(name, sampled, setup, config)
        sampled_log_probs = log_probs.gather(1, sampled).reshape(-1)  # (P * n,)
        loss = -(estimate.double() * sampled_log_probs).mean()
        (grad,) = torch.autograd.grad(loss, policy.theta)
        optimizer.step(grad)
    return history


def run(config: SandboxConfig, progress: bool = True) -> dict[str, list[dict[str, list[float]]]]:
    """Run every method of ``config`` for every seed.

    Returns:
        ``{method: [history of seed s for s in config.seeds]}``, each history as :func:`run_method`.
    """
    results: dict[str, list[dict[str, list[float]]]] = {name: [] for name in config.methods}
    bar = tqdm(total=len(config.seeds) * len(config.methods), desc="sandbox", disable=not progress)
    for seed in config.seeds:
        setup = make_setup(config, seed)
        for name in config.methods:
            bar.set_postfix_str(f"seed={seed} {name}")
            results[name].append(run_method(name, setup, config))
            bar.update()
    bar.close()
    return results


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the previous setting.

    Every tensor here has a few thousand entries: splitting such ops across threads costs more in
    synchronisation than it saves, and on a busy 2-core machine it makes the sandbox several times
    slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
