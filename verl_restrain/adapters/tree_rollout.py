"""ETTRL's entropy-fork tree rollouts (ETMR) as a verl agent loop: ``entropy_fork_tree``.

A prompt's n = ``actor_rollout_ref.rollout.n`` sessions form trees of L = 1 + B * N leaves. In each
tree the first leaf is an ordinary sampled response (the root); the other B * N leaves each copy
the root up to one of its N highest-entropy positions and sample a new continuation from there
(B per position). With the paper's N = 2, B = 2 and n = 60 that is M = 12 trees of 5 leaves, against
TTRL's 64 independent samples; shared prefixes are decoded once (same replica, prefix cache).

Every leaf is its own session with one output (TransferQueue key ``{uid}_{session}_0``), so verl's
reward workers score each leaf on its own response and the vote and the GRPO group pool all n
leaves exactly as n independent samples. A single session returning all leaves of a tree would not
do: verl gives every output of a session the last output's reward and ``reward_extra_info``
(``_agent_loop_postprocess``, ``verl/trainer/ppo/v1/agent_loop_tq.py``), so the leaves could not
vote. Sessions of one prompt run as concurrent tasks of one agent-loop worker (``_run_prompt``
ibid.), which is how a branch session waits for its tree's root here.

Token entropies come from the rollout server: one scoring pass over prompt + root asks for the
top-k log-probs of every position (``prompt_logprobs``, the request verl's distillation teacher
makes), and :func:`verl_restrain.entropy.top_logprob_entropy` turns them into entropies. verl's
servers return only the sampled token's log-prob while generating (``sampling_params["logprobs"]``
is forced to 0 in ``vLLMHttpServer.generate``), so the pass is needed. The root's last token is not
scored (the pass must leave room for one generated token when prompt + root fill
``max_model_len``); a fork at the last token would only re-decide where to stop.

Choices where the paper is silent (documented in README): a fork at position t keeps the root's
tokens before t and samples token t anew; fork points are the N highest-entropy positions, ties to
the earlier one; a root with fewer than N scored positions sends its unused branches back to the
prompt (independent samples), so a prompt always has n leaves; n need not be a multiple of L (the
last tree is partial; validation with ``val_kwargs.n = 1`` samples roots only).

Select it with ``actor_rollout_ref.rollout.agent.default_agent_loop=entropy_fork_tree``; set N, B
and k through verl's agent-loop config file (``rollout.agent.agent_loop_config_path``)::

    - name: entropy_fork_tree
      _target_: verl_restrain.adapters.tree_rollout.EntropyForkTreeAgentLoop
      fork_points: 2        # N
      branches_per_fork: 2  # B
      top_logprobs: 20      # k, at most the server's max_logprobs (vLLM's default 20)
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.utils.profiler import simple_timer
from verl.utils.rollout_trace import rollout_trace_op
from verl.workers.rollout.llm_server import LLMServerClient
from verl.workers.rollout.replica import TokenOutput
from verl_restrain.adapters.settings import AGENT_LOOP_NAME
from verl_restrain.entropy import fork_positions, top_logprob_entropy

__all__ = ["AGENT_LOOP_NAME", "EntropyForkTreeAgentLoop", "TreeRole", "tree_role"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

ABORT_RETRY_SECONDS = 1.0
"""Wait before re-sending a scoring pass that a weight sync aborted (as verl's async client does)."""


@dataclass(frozen=True)
class TreeRole:
    """Place of one session in its prompt's forest of trees with L = 1 + B * N leaves each."""

    tree: int  # session // L
    leaf: int  # session % L; 0 is the root
    fork_rank: int  # for a branch: which fork point, 0 = highest entropy; -1 for the root
    branch: int  # for a branch: which of the B continuations at that point; -1 for the root

    @property
    def is_root(self) -> bool:
        return self.leaf == 0


def tree_role(session_id: int, fork_points: int, branches_per_fork: int) -> TreeRole:
    """The :class:`TreeRole` of session ``session_id`` for N = ``fork_points``, B = ``branches_per_fork``."""
    leaves = 1 + fork_points * branches_per_fork
    tree, leaf = divmod(int(session_id), leaves)
    if leaf == 0:
        return TreeRole(tree, 0, -1, -1)
    fork_rank, branch = divmod(leaf - 1, branches_per_fork)
    return TreeRole(tree, leaf, fork_rank, branch)


@dataclass
class _Root:
    prompt_ids: list[int]
    token_ids: list[int]
    log_probs: list[float] | None
    min_global_steps: Any
    max_global_steps: Any


@dataclass
class _Tree:
    """What the sessions of one tree share inside one agent-loop worker."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    root: _Root | None = None
    error: BaseException | None = None
    forks: asyncio.Task | None = None  # (positions, entropies) of the root, computed once on demand
    users: int = 0


_TREES: dict[tuple[str, Any, int], _Tree] = {}
"""(uid, global step, tree) -> the tree's shared state, while any of its sessions runs."""


def _acquire(key: tuple[str, Any, int]) -> _Tree:
    tree = _TREES.setdefault(key, _Tree())
    tree.users += 1
    return tree


def _release(key: tuple[str, Any, int]) -> None:
    tree = _TREES[key]
    tree.users -= 1
    if tree.users == 0:
        del _TREES[key]


@register(AGENT_LOOP_NAME)
class EntropyForkTreeAgentLoop(AgentLoopBase):
    """One leaf of an entropy-fork tree per session (module docstring).

    Args:
        fork_points: N, positions of the root that branch.
        branches_per_fork: B, continuations sampled at each of them.
        top_logprobs: k, log-probs per position the scoring pass asks for.
    """

    def __init__(self, *args, fork_points: int = 2, branches_per_fork: int = 2, top_logprobs: int = 20, **kwargs):
        super().__init__(*args, **kwargs)
        for name, value, low in (("fork_points", fork_points, 0), ("branches_per_fork", branches_per_fork, 1),
                                 ("top_logprobs", top_logprobs, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{AGENT_LOOP_NAME}: {name} must be an integer >= {low}, got {value!r}")
        if getattr(self.rollout_config, "enable_rollout_routing_replay", False):
            raise ValueError(
                f"{AGENT_LOOP_NAME} does not support actor_rollout_ref.rollout.enable_rollout_routing_replay: a "
                "branch's shared prefix comes from the prefix cache, whose routed experts the server does not report"
            )
        self.fork_points = fork_points
        self.branches_per_fork = branches_per_fork
        self.top_logprobs = top_logprobs
        self.response_length = self.rollout_config.response_length

    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        if "session_id" not in kwargs:
            raise RuntimeError(
                f"{AGENT_LOOP_NAME} needs verl's v1 TransferQueue rollout (trainer.use_v1=true), which runs a "
                "prompt's rollout.n sessions together and passes each its session_id"
            )
        priority = int(priority)
        role = tree_role(kwargs["session_id"], self.fork_points, self.branches_per_fork)
        key = (str(kwargs["uid"]), kwargs.get("global_steps"), role.tree)
        # Taken before the first await: verl's _run_prompt creates all sessions of a prompt before
        # any of them runs, so every session of a tree holds its record before the root can finish
        # and, releasing it, drop the record.
        tree = _acquire(key)
        try:
            if role.is_root:
                return await self._run_root(tree, key, role, kwargs["raw_prompt"], sampling_params, priority)
            await tree.ready.wait()
            if tree.error is not None:
                raise RuntimeError(f"the root of ETMR tree {key} failed") from tree.error
            if tree.forks is None:
                tree.forks = asyncio.ensure_future(self._fork_points(tree.root, key, priority))
                tree.forks.add_done_callback(lambda task: task.cancelled() or task.exception())
            # shielded: a cancelled branch must not cancel the scoring pass its siblings share
            positions, entropies = await asyncio.shield(tree.forks)
            root = tree.root
        finally:
            _release(key)

        if role.fork_rank < len(positions):
            position, entropy = positions[role.fork_rank], entropies[role.fork_rank]
        else:  # fewer scored positions than fork points: an independent sample
            position, entropy = 0, math.nan
        prefix = root.token_ids[:position]
        metrics: dict[str, Any] = {}
        with simple_timer("generate_sequences", metrics):
            output: TokenOutput = await self.server_manager.generate(
                request_id=self._request_id(key, role.leaf, "branch"),
                prompt_ids=root.prompt_ids + prefix,
                sampling_params=dict(sampling_params, max_tokens=self.response_length - position),
                priority=priority,
            )
        log_probs = None
        if root.log_probs is not None and output.log_probs is not None:
            log_probs = root.log_probs[:position] + list(output.log_probs)
        extra_fields = dict(output.extra_fields)
        extra_fields["min_global_steps"] = _earliest(root.min_global_steps, extra_fields.get("min_global_steps"))
        extra_fields["max_global_steps"] = _latest(root.max_global_steps, extra_fields.get("max_global_steps"))
        info = {"tree": role.tree, "leaf": role.leaf, "fork_position": position, "fork_entropy": entropy}
        return await self._leaf(root.prompt_ids, prefix + list(output.token_ids), log_probs, output, metrics,
                                extra_fields, info)

    async def _run_root(self, tree: _Tree, key, role: TreeRole, raw_prompt, sampling_params, priority: int):
        """Sample the tree's first response and share it; any failure reaches the waiting branches."""
        try:
            messages = list(raw_prompt)
            multi_modal_data = await self.process_multi_modal_info(messages)
            if multi_modal_data:
                raise ValueError(f"{AGENT_LOOP_NAME} supports text prompts only, got {sorted(multi_modal_data)}")
            prompt_ids = await self.ct_build_initial_tokens(messages)
            metrics: dict[str, Any] = {}
            with simple_timer("generate_sequences", metrics):
                output: TokenOutput = await self.server_manager.generate(
                    request_id=self._request_id(key, role.leaf, "root"),
                    prompt_ids=prompt_ids,
                    sampling_params=dict(sampling_params),
                    priority=priority,
                )
            extra_fields = dict(output.extra_fields)
            tree.root = _Root(
                prompt_ids=list(prompt_ids),
                token_ids=list(output.token_ids),
                log_probs=list(output.log_probs) if output.log_probs is not None else None,
                min_global_steps=extra_fields.get("min_global_steps"),
                max_global_steps=extra_fields.get("max_global_steps"),
            )
        except BaseException as error:
            tree.error = error
            raise
        finally:
            tree.ready.set()
        info = {"tree": role.tree, "leaf": 0, "fork_position": None, "fork_entropy": None}
        return await self._leaf(prompt_ids, tree.root.token_ids, tree.root.log_probs, output, metrics,
                                extra_fields, info)

    async def _fork_points(self, root: _Root, key, priority: int) -> tuple[list[int], list[float]]:
        """The root's N highest-entropy positions and their entropies, from one scoring pass."""
        if len(root.token_ids) < 2:
            return [], []
        # Every response token but the last: the pass must leave room to generate one token.
        sequence = root.prompt_ids + root.token_ids[:-1]
        sampling = {"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": self.top_logprobs, "detokenize": False}
        while True:
            # The base client's generate: verl's FullyAsyncLLMServerClient rebuilds extra_fields on
            # resume and drops prompt_logprobs (verl/workers/rollout/llm_server.py); max_tokens=1
            # needs no resume, only a retry when a weight sync aborts the request.
            output: TokenOutput = await LLMServerClient.generate(
                self.server_manager,
                request_id=self._request_id(key, 0, "entropy"),
                prompt_ids=sequence,
                sampling_params=dict(sampling),
                priority=priority,
            )
            if "prompt_logprobs" in output.extra_fields:
                break
            if output.stop_reason != "aborted":
                raise RuntimeError(
                    f"{AGENT_LOOP_NAME}: the rollout server returned no prompt_logprobs for the scoring pass "
                    f"(rollout.name={self.rollout_config.name}); vLLM and SGLang servers return them"
                )
            await asyncio.sleep(ABORT_RETRY_SECONDS)
        rows = output.extra_fields["prompt_logprobs"]
        if len(rows) != len(sequence):
            raise RuntimeError(f"scoring pass returned {len(rows)} rows of log-probs for {len(sequence)} tokens")
        # Row j holds the distribution of token j + 1 (verl's extract_prompt_logprobs), so response
        # token t, at len(prompt) + t, is scored by row len(prompt) + t - 1, for t = 0 .. T - 2.
        prompt_length, length = len(root.prompt_ids), len(root.token_ids)
        scored = range(max(0, 1 - prompt_length), length - 1)
        entropy = torch.full((length,), math.nan, dtype=torch.float64)
        if scored:
            top = [[math.nan if v is None else float(v) for v in rows[prompt_length + t - 1]] for t in scored]
            entropy[scored.start:scored.stop] = top_logprob_entropy(torch.tensor(top, dtype=torch.float64))
        positions = fork_positions(entropy, self.fork_points)
        return positions.tolist(), entropy[positions].tolist()

    def _request_id(self, key, leaf: int, purpose: str) -> str:
        """Sticky-routing id: one per tree, so a tree's requests share a replica's prefix cache.

        Under ``full_determinism`` verl hands the id to vLLM as is, and concurrent requests need
        distinct ids there.
        """
        uid, step, tree = key
        if getattr(self.rollout_config, "full_determinism", False):
            return f"etmr-{uid}-{step}-{tree}-{leaf}-{purpose}"
        return f"etmr-{uid}-{step}-{tree}"

    async def _leaf(self, prompt_ids, token_ids, log_probs, output: TokenOutput, metrics, extra_fields, info):
        """An AgentLoopOutput laid out as verl's single-turn loop lays out one response."""
        if metrics.get("num_preempted") is None:
            metrics["num_preempted"] = output.num_preempted if output.num_preempted is not None else -1
        merge_result, response_mask, response_logprobs = await self.ct_merge_assistant_token(
            prompt_ids, token_ids, [], [] if log_probs else None, assistant_logprobs=log_probs if log_probs else None
        )
        response_ids = merge_result.token_ids[-len(response_mask):] if response_mask else []
        prompt_ids = merge_result.token_ids[: len(merge_result.token_ids) - len(response_mask)]
        extra_fields.update({"turn_scores": [], "tool_rewards": [], "etmr": info})
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids[: self.response_length],
            response_mask=response_mask[: self.response_length],
            response_logprobs=response_logprobs[: self.response_length] if response_logprobs else None,
            multi_modal_data={},
            num_turns=2,
            metrics=metrics,
            extra_fields=extra_fields,
        )


def _earliest(a, b):
    return b if a is None else a if b is None else min(a, b)


def _latest(a, b):
    return b if a is None else a if b is None else max(a, b)
