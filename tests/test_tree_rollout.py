"""ETMR tree rollouts (verl_restrain.adapters.tree_rollout) on CPU against a scripted rollout server.

The scripted server stands where verl's vLLM server actor stands: verl's own ``LLMServerClient``
(and ``FullyAsyncLLMServerClient``) send it requests; it generates tokens by a seeded rule and
answers a scoring pass with prompt log-probs laid out by verl's own ``extract_prompt_logprobs``
(run from verl's source, as the module that holds it imports vLLM). The last tests run a prompt
through verl's ``AgentLoopWorkerTQ._run_prompt`` into a real local TransferQueue and the leaves on
into the RESTRAIN advantage step.
"""

import ast
import asyncio
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
from tiny_lm import make_tokenizer
from verl_batches import compose_config

from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient, LLMServerClient
from verl.workers.rollout.replica import TokenOutput
from verl_restrain.adapters import tree_rollout
from verl_restrain.adapters.tree_rollout import AGENT_LOOP_NAME, EntropyForkTreeAgentLoop, tree_role
from verl_restrain.entropy import top_logprob_entropy

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]
RESPONSE_LENGTH = 24


def _verl_extract_prompt_logprobs():
    """``extract_prompt_logprobs`` of ``verl/workers/rollout/vllm_rollout/utils.py``, compiled from its source."""
    path = Path(importlib.util.find_spec("verl").origin).parent / "workers/rollout/vllm_rollout/utils.py"
    module = ast.parse(path.read_text())
    node = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "extract_prompt_logprobs")
    namespace = {"Optional": Optional, "RequestOutput": object}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["extract_prompt_logprobs"]


EXTRACT_PROMPT_LOGPROBS = _verl_extract_prompt_logprobs()


def width(sequence, index):
    """The scripted model's next-token distribution at ``index`` is uniform over this many tokens."""
    return 1 + (3 * index + sequence[index]) % 6


class ScriptedServer:
    """A rollout server actor: ``generate.remote(...)`` as verl's vLLM server answers it."""

    def __init__(self, fail_roots=False, abort_scoring=0, max_length=RESPONSE_LENGTH, short_roots=None):
        self.requests = []
        self.fail_roots = fail_roots
        self.abort_scoring = abort_scoring
        self.max_length = max_length
        self.short_roots = short_roots  # root length to produce, or None
        self.generate = SimpleNamespace(remote=self._generate)

    async def _generate(self, *, request_id, prompt_ids, sampling_params, priority=0, **_):
        sampling_params = dict(sampling_params)
        self.requests.append({"prompt_ids": list(prompt_ids), "sampling_params": sampling_params})
        await asyncio.sleep(0)
        if "prompt_logprobs" in sampling_params:
            if self.abort_scoring:
                self.abort_scoring -= 1
                return TokenOutput(token_ids=[], stop_reason="aborted", extra_fields={"global_steps": 7})
            return self._score(prompt_ids, sampling_params["prompt_logprobs"])
        is_root = "max_tokens" not in sampling_params
        if is_root and self.fail_roots:
            raise RuntimeError("scripted root failure")
        generator = torch.Generator().manual_seed(len(self.requests))
        budget = min(sampling_params.get("max_tokens", self.max_length), self.max_length)
        length = int(torch.randint(max(1, budget // 2), budget + 1, (1,), generator=generator))
        if is_root and self.short_roots is not None:
            length = self.short_roots
        tokens = torch.randint(10, 60, (length,), generator=generator).tolist()
        log_probs = [-(token % 5) / 10 - 0.01 for token in tokens] if sampling_params.get("logprobs") else None
        return TokenOutput(token_ids=tokens, log_probs=log_probs, stop_reason="completed",
                           extra_fields={"global_steps": 7}, num_preempted=0)

    def _score(self, prompt_ids, k):
        # vLLM's RequestOutput.prompt_logprobs: None for the first token, then a dict of the top-k
        # (rank 1..k) plus the actual token when it is outside them.
        prompt_logprobs = [None]
        for index in range(1, len(prompt_ids)):
            w, actual = width(prompt_ids, index), prompt_ids[index]
            ids = [actual] + [token for token in range(1000, 1000 + k) if token != actual][: k - 1]
            prompt_logprobs.append({
                token: SimpleNamespace(logprob=-math.log(w) if rank <= w else -math.inf, rank=rank)
                for rank, token in enumerate(ids, start=1)
            })
        extra_fields = {"global_steps": 7}
        EXTRACT_PROMPT_LOGPROBS(SimpleNamespace(prompt_logprobs=prompt_logprobs), k, extra_fields)
        return TokenOutput(token_ids=[1], stop_reason="completed", extra_fields=extra_fields)


class ScriptedRouting:
    """Routes one of verl's clients to the scripted server; records each request's routing id."""

    def __init__(self, config, server):
        super().__init__(config, load_balancer_handle=None)
        self.server, self.routes = server, []

    async def _acquire_server(self, request_id, **extra):
        self.routes.append(request_id)
        return "replica-0", self.server

    def _release_server(self, server_id, request_id=None):
        pass


class ScriptedClient(ScriptedRouting, LLMServerClient):
    """verl's client on the scripted server."""


class ScriptedAsyncClient(ScriptedRouting, FullyAsyncLLMServerClient):
    """verl's fully asynchronous client on the scripted server."""


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def config():
    return compose_config(
        f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
        "actor_rollout_ref.rollout.prompt_length=96",
        "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_LOOP_NAME}",
    )


def make_loop(config, client, tokenizer, **options):
    return EntropyForkTreeAgentLoop(
        trainer_config=DictConfigWrap(config), server_manager=client, tokenizer=tokenizer, processor=None,
        dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data), **options,
    )


def run_prompt(config, client, tokenizer, n, uid="u0", **options):
    """A prompt's n sessions as verl's _run_prompt starts them: all tasks created, then awaited."""

    async def main():
        tasks = [
            asyncio.create_task(make_loop(config, client, tokenizer, **options).run(
                {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True},
                session_id=session, uid=uid, raw_prompt=PROMPT, global_steps=3))
            for session in range(n)
        ]
        return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(main())


def expected_forks(prompt_ids, root, num_forks):
    """The num_forks highest entropies log(width) over every response token but the last."""
    sequence = prompt_ids + root
    entropy = [(math.log(width(sequence, len(prompt_ids) + t)), t) for t in range(len(root) - 1)]
    return [t for _, t in sorted(entropy, key=lambda item: (-item[0], item[1]))][:num_forks]


def generation_requests(server):
    return [r for r in server.requests if "prompt_logprobs" not in r["sampling_params"]]


# --------------------------------------------------------------------------------------------
def test_tree_layout_of_the_papers_setting():
    # N = 2, B = 2: L = 5 leaves per tree, 60 sessions = 12 trees
    roles = [tree_role(session, 2, 2) for session in range(60)]
    assert [r.tree for r in roles] == [s // 5 for s in range(60)]
    assert [(r.fork_rank, r.branch) for r in roles[:5]] == [(-1, -1), (0, 0), (0, 1), (1, 0), (1, 1)]
    assert sum(r.is_root for r in roles) == 12
    assert all(tree_role(s, 0, 2).is_root for s in range(5))  # N = 0: independent samples


def test_leaves_of_a_forest(config, tokenizer):
    server = ScriptedServer()
    client = ScriptedClient(config, server)
    # n = 11 with L = 5: two full trees and a root alone
    outputs = run_prompt(config, client, tokenizer, 11)
    assert not any(isinstance(o, BaseException) for o in outputs), outputs
    assert tree_rollout._TREES == {}

    prompt_ids = outputs[0].prompt_ids
    requests = generation_requests(server)
    roots = {o.extra_fields["etmr"]["tree"]: o for o in outputs if o.extra_fields["etmr"]["leaf"] == 0}
    assert sorted(roots) == [0, 1, 2]
    # one scoring pass per tree that has branches: none for the lone root of tree 2
    scoring = [r for r in server.requests if "prompt_logprobs" in r["sampling_params"]]
    assert len(scoring) == 2
    for request in scoring:
        assert request["sampling_params"] == {"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 20,
                                              "detokenize": False}

    for session, output in enumerate(outputs):
        info = output.extra_fields["etmr"]
        role = tree_role(session, 2, 2)
        assert (info["tree"], info["leaf"]) == (role.tree, role.leaf)
        assert output.prompt_ids == prompt_ids
        assert output.response_mask == [1] * len(output.response_ids)
        assert len(output.response_ids) <= RESPONSE_LENGTH
        assert len(output.response_logprobs) == len(output.response_ids)
        if role.is_root:
            continue
        root = roots[role.tree]
        forks = expected_forks(prompt_ids, root.response_ids, 2)
        position = forks[role.fork_rank]
        assert info["fork_position"] == position
        assert info["fork_entropy"] == pytest.approx(math.log(width(prompt_ids + root.response_ids,
                                                                       len(prompt_ids) + position)))
        # the shared prefix and its log-probs come from the root; the rest from the branch's own request
        assert output.response_ids[:position] == root.response_ids[:position]
        assert output.response_logprobs[:position] == root.response_logprobs[:position]
        request = next(r for r in requests if r["prompt_ids"] == prompt_ids + root.response_ids[:position]
                       and r["sampling_params"].get("max_tokens") == RESPONSE_LENGTH - position)
        assert request["sampling_params"]["logprobs"] is True
        assert output.extra_fields["min_global_steps"] == 7

    branches = [o for o in outputs if o.extra_fields["etmr"]["leaf"] > 0]
    assert all(0 < o.extra_fields["etmr"]["fork_position"] < len(o.response_ids) for o in branches)

    # fewer tokens decoded than the leaves hold: prefixes are shared
    decoded = sum(len(r) for r in [o.response_ids for o in outputs if o.extra_fields["etmr"]["leaf"] == 0])
    decoded += sum(len(o.response_ids) - o.extra_fields["etmr"]["fork_position"]
                   for o in outputs if o.extra_fields["etmr"]["leaf"] > 0)
    assert decoded < sum(len(o.response_ids) for o in outputs)

    # one routing id per tree: a tree's requests reach one replica and its prefix cache
    assert len(set(client.routes)) == 3
    assert all(route.startswith("etmr-u0-3-") for route in client.routes)


def test_forks_rank_the_top_k_entropy(config, tokenizer):
    # k = 3 < the widest distributions (6 tokens): the forks follow the top-3 bound, not log(width)
    server = ScriptedServer()
    outputs = run_prompt(config, ScriptedClient(config, server), tokenizer, 5, top_logprobs=3, fork_points=4,
                         branches_per_fork=1)
    prompt_ids, root = outputs[0].prompt_ids, outputs[0].response_ids
    sequence = prompt_ids + root
    bound = []
    for t in range(len(root) - 1):
        w = width(sequence, len(prompt_ids) + t)
        bound.append(float(top_logprob_entropy(torch.tensor([-math.log(w) if r <= w else -math.inf
                                                             for r in range(1, 4)]))))
    expected = sorted(range(len(bound)), key=lambda t: (-bound[t], t))[:4]
    assert [o.extra_fields["etmr"]["fork_position"] for o in outputs[1:]] == expected


@pytest.mark.parametrize("root_length, positions", [(1, [0, 0, 0, 0]), (2, [0, 0, 0, 0])])
def test_short_roots_send_unused_branches_back_to_the_prompt(config, tokenizer, root_length, positions):
    server = ScriptedServer(short_roots=root_length)
    outputs = run_prompt(config, ScriptedClient(config, server), tokenizer, 5)
    assert [o.extra_fields["etmr"]["fork_position"] for o in outputs[1:]] == positions
    scoring = [r for r in server.requests if "prompt_logprobs" in r["sampling_params"]]
    # length 1: nothing to score; length 2: one scored position (the first token), fork rank 1 unmatched
    assert len(scoring) == (root_length > 1)
    if root_length == 2:
        assert [math.isnan(o.extra_fields["etmr"]["fork_entropy"]) for o in outputs[1:]] == [False, False, True, True]


def test_a_failing_root_fails_its_branches_and_frees_the_tree(config, tokenizer):
    outputs = run_prompt(config, ScriptedClient(config, ScriptedServer(fail_roots=True)), tokenizer, 5)
    assert all(isinstance(o, RuntimeError) for o in outputs)
    assert "scripted root failure" in str(outputs[0])
    assert all("root of ETMR tree" in str(o) and o.__cause__ is outputs[0] for o in outputs[1:])
    assert tree_rollout._TREES == {}


def test_a_cancelled_branch_leaves_its_siblings_running(config, tokenizer):
    server = ScriptedServer()

    async def main():
        tasks = [
            asyncio.create_task(make_loop(config, ScriptedClient(config, server), tokenizer).run(
                {"temperature": 1.0, "logprobs": False}, session_id=session, uid="c", raw_prompt=PROMPT,
                global_steps=0))
            for session in range(5)
        ]
        while not any("prompt_logprobs" in r["sampling_params"] for r in server.requests):
            await asyncio.sleep(0)
        tasks[1].cancel()  # waits on the scoring pass it started
        return await asyncio.gather(*tasks, return_exceptions=True)

    outputs = asyncio.run(main())
    assert isinstance(outputs[1], asyncio.CancelledError)
    assert [o.extra_fields["etmr"]["leaf"] for i, o in enumerate(outputs) if i != 1] == [0, 2, 3, 4]
    assert tree_rollout._TREES == {}


def test_fully_async_client_keeps_the_scoring_pass_and_retries_an_abort(config, tokenizer):
    server = ScriptedServer(abort_scoring=1)
    outputs = run_prompt(config, ScriptedAsyncClient(config, server), tokenizer, 5)
    assert not any(isinstance(o, BaseException) for o in outputs), outputs
    assert len([r for r in server.requests if "prompt_logprobs" in r["sampling_params"]]) == 2
    forks = expected_forks(outputs[0].prompt_ids, outputs[0].response_ids, 2)
    assert [o.extra_fields["etmr"]["fork_position"] for o in outputs[1:]] == [forks[0], forks[0], forks[1], forks[1]]


def test_full_determinism_gives_every_request_its_own_id(config, tokenizer):
    from verl_batches import updated

    deterministic = updated(config, {"actor_rollout_ref.rollout.full_determinism": True})
    client = ScriptedClient(deterministic, ScriptedServer())
    run_prompt(deterministic, client, tokenizer, 5)
    assert len(set(client.routes)) == len(client.routes) == 6  # 5 leaves and 1 scoring pass


def test_configuration_errors(config, tokenizer):
    client = ScriptedClient(config, ScriptedServer())
    with pytest.raises(ValueError, match="fork_points must be an integer >= 0"):
        make_loop(config, client, tokenizer, fork_points=-1)
    with pytest.raises(ValueError, match="branches_per_fork"):
        make_loop(config, client, tokenizer, branches_per_fork=0)
    from verl_batches import updated

    replay = updated(config, {"actor_rollout_ref.rollout.enable_rollout_routing_replay": True})
    with pytest.raises(ValueError, match="routing_replay"):
        make_loop(replay, client, tokenizer)
    with pytest.raises(RuntimeError, match="session_id"):
        asyncio.run(make_loop(config, client, tokenizer).run({}, uid="x", raw_prompt=PROMPT))


def test_registered_and_instantiated_as_verl_does(config, tokenizer):
    import hydra

    entry = _agent_loop_registry[AGENT_LOOP_NAME]
    assert entry == {"_target_": "verl_restrain.adapters.tree_rollout.EntropyForkTreeAgentLoop"}
    loop = hydra.utils.instantiate(
        config=dict(entry, fork_points=3), trainer_config=DictConfigWrap(config=config),
        server_manager=ScriptedClient(config, ScriptedServer()), tokenizer=tokenizer, processor=None,
        hf_model_type=None, dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data), tools=None,
    )
    assert isinstance(loop, EntropyForkTreeAgentLoop) and loop.fork_points == 3


# --------------------------------------------------------------------------------------------
# Through verl's own session fan-out, TransferQueue and reward scoring, on to the vote.
# --------------------------------------------------------------------------------------------
class ScriptedRewardWorker:
    """A reward-loop worker: scores the one output it is sent by that output's own last token."""

    def __init__(self):
        self.batches = []
        self.compute_score = SimpleNamespace(remote=self._compute_score)

    async def _compute_score(self, data):
        self.batches.append(len(data))
        responses = data.batch["responses"]
        letter = "ABC"[int(responses[-1][responses[-1] != 0][-1]) % 3]
        return {"reward_score": float(letter == "A"),
                "reward_extra_info": {"pred": letter, "kind": "choice", "acc": float(letter == "A"),
                                      "has_gold": True, "last_token": int(responses[-1][responses[-1] != 0][-1])}}


def test_leaves_reach_transfer_queue_as_independent_votes(transfer_queue, config, tokenizer):
    import numpy as np
    from omegaconf import OmegaConf

    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
    from verl_batches import rows_to_dataproto, updated
    from verl_restrain.adapters.step import restrain_advantage_step

    n = 10
    run_config = updated(config, {"actor_rollout_ref.rollout.n": n})
    worker_class = AgentLoopWorkerTQ.__ray_actor_class__
    worker = worker_class.__new__(worker_class)
    reward_worker = ScriptedRewardWorker()
    worker.__dict__.update(
        config=run_config, llm_client=ScriptedClient(run_config, ScriptedServer()), tokenizer=tokenizer,
        processor=None, dataset_cls=RLHFDataset, hf_model_type=None, tools=[], mm_processor_kwargs={},
        reward_loop_worker_handles=[reward_worker], distillation_enabled=False, background_tasks=set(),
    )
    prompt = {"uid": "p0", "raw_prompt": PROMPT, "global_steps": 3, "index": 0, "agent_name": AGENT_LOOP_NAME,
              "data_source": "test"}
    trajectory = {"step": 3, "sample_index": 0, "rollout_n": 0, "validate": False}
    sampling_params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    asyncio.run(worker._run_prompt(prompt, sampling_params, trajectory))
    assert tree_rollout._TREES == {}

    listed = transfer_queue.kv_list("train")["train"]
    assert listed["p0"]["status"] == "finished"
    keys = sorted((key for key in listed if key != "p0"), key=lambda key: int(key.split("_")[1]))
    assert keys == [f"p0_{session}_0" for session in range(n)]
    assert reward_worker.batches == [1] * n  # every leaf scored alone
    fields = ["uid", "responses", "response_mask", "rm_scores", "extra_fields", "rollout_log_probs"]
    data = transfer_queue.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
    rows = []
    for i in range(n):
        responses = data["responses"][i]
        info = data["extra_fields"][i]["reward_extra_info"]
        assert info["last_token"] == int(responses[-1])  # the leaf's own score, not the last session's
        assert float(data["rm_scores"][i][-1]) == float(info["pred"] == "A")
        assert data["extra_fields"][i]["etmr"]["leaf"] == i % 5
        rows.append({"uid": data["uid"][i], "response_mask": data["response_mask"][i],
                     "extra_fields": data["extra_fields"][i]})

    # The RESTRAIN step (TTRL's majority vote) sees n sessions: one vote per leaf.
    batch = rows_to_dataproto(rows)
    ttrl = compose_config("restrain_method=ttrl").algorithm
    restrain_advantage_step(batch, keys, OmegaConf.create(OmegaConf.to_container(ttrl)))
    preds = [row["extra_fields"]["reward_extra_info"]["pred"] for row in rows]
    majority = max("ABC", key=lambda letter: (preds.count(letter), -preds.index(letter) if letter in preds else 0))
    reward = np.array([float(p == majority) for p in preds])
    expected = (reward - reward.mean()) / (reward.std(ddof=1) + 1e-6) if reward.std() > 0 else np.zeros(n)
    advantages = batch.batch["advantages"][:, 0].numpy()
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-6)
