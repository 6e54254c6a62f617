"""The methods this package trains, as settings of one estimator.

RESTRAIN, its ablations and the label-free baselines differ only in which of RESTRAIN's three
components are switched on. Each method is therefore a preset of four switches, not a code path of
its own: the sandbox reads these presets directly, and the Hydra presets under
``verl_restrain/config/restrain_method/`` mirror them (a test keeps the two in sync).

GRPO with gold labels is not listed: it is verl's own ``grpo`` estimator with a gold reward.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHTINGS = ("gaussian", "uniform", "majority")
LABEL_MODES = ("self", "offline")
PROMPT_WEIGHT_SOURCES = ("offline", "online", "column")
CLIP_MODES = ("per_label", "combined")
ADVANTAGE_RESHAPINGS = ("entropy", "clip")
TREE_AGENT_LOOP = "entropy_fork_tree"


@dataclass(frozen=True)
class Method:
    """One label-free method as a choice of RESTRAIN's components.

    Attributes:
        weighting: pseudo-label weighting over answer clusters: ``gaussian`` (RESTRAIN),
            ``uniform`` or ``majority`` (one-hot on the majority cluster, as TTRL).
        penalize: negative rollout penalization on (M < kappa gives every rollout -delta);
            off means kappa = 0.
        use_prompt_weight: scale each prompt by its offline weight u_x.
        label_mode: ``self`` votes on the current rollouts; ``offline`` uses the fixed majority
            answer of the frozen base model written by the scoring job (SRT-offline).
        description: one line for tables and docs.
        prompt_weight_source: ``offline`` (u_x from the frozen base model's vote) or ``online``
            (u = g(M / n) of the current policy's own vote each step).
        advantage_reshaping: ETTRL's entropy-based advantage reshaping (``entropy``) or its clip
            variant (``clip``) applied to the advantage; None for none.
        agent_loop: verl's agent loop that samples the rollouts; None for verl's default (one
            independent sample per rollout), ``entropy_fork_tree`` for ETTRL's tree rollouts.
    """

    weighting: str
    penalize: bool
    use_prompt_weight: bool
    label_mode: str
    description: str
    prompt_weight_source: str = "offline"
    advantage_reshaping: str | None = None
    agent_loop: str | None = None

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; expected one of {WEIGHTINGS}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"unknown label_mode {self.label_mode!r}; expected one of {LABEL_MODES}")
        if self.prompt_weight_source not in ("offline", "online"):
            raise ValueError(f"a method's prompt weights are offline or online, got {self.prompt_weight_source!r}")
        if self.advantage_reshaping not in (None, *ADVANTAGE_RESHAPINGS):
            raise ValueError(f"unknown advantage_reshaping {self.advantage_reshaping!r}")

    def kappa(self, kappa: int) -> int:
        """The kappa this method trains with, given the configured one (0 disables penalization)."""
        return kappa if self.penalize else 0


METHODS: dict[str, Method] = {
    "restrain": Method("gaussian", True, True, "self", "RESTRAIN: all three components"),
    "ttrl": Method("majority", False, False, "self", "TTRL: majority-vote pseudo-label"),
    "srt_online": Method("majority", False, False, "self", "SRT (online): majority-vote pseudo-label"),
    "srt_offline": Method("majority", False, False, "offline", "SRT (offline): fixed base-model majority label"),
    "uniform_weighting": Method("uniform", True, True, "self", "RESTRAIN with uniform pseudo-label weights"),
    "no_pseudo_label_weighting": Method(
        "majority", True, True, "self", "RESTRAIN without pseudo-label weighting (majority label)"
    ),
    "no_negative_penalization": Method("gaussian", False, True, "self", "RESTRAIN without negative penalization"),
    "no_prompt_weighting": Method("gaussian", True, False, "self", "RESTRAIN without prompt weighting"),
    "online_prompt_weight": Method(
        "gaussian", True, True, "self", "RESTRAIN with online prompt weights u = g(M / n) of the current vote",
        prompt_weight_source="online",
    ),
    "ettrl": Method(
        "majority", False, False, "self", "ETTRL: TTRL with entropy-based advantage reshaping and tree rollouts",
        advantage_reshaping="entropy", agent_loop=TREE_AGENT_LOOP,
    ),
    "ettrl_ear_only": Method(
        "majority", False, False, "self", "ETTRL's advantage reshaping on TTRL's independent rollouts",
        advantage_reshaping="entropy",
    ),
}


def get_method(name: str) -> Method:
    """Return the preset called ``name``, with an error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None
