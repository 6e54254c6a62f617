"""The vLLM server of verl's v1 loop, on CPU: a rollout replica that answers from a script.

:class:`ScriptedReplica` is registered in verl's ``RolloutReplicaRegistry`` as
``actor_rollout_ref.rollout.name=scripted``. verl's ``LLMServerManager`` launches it as a hybrid replica,
its load balancer routes to it, and verl's own LLM clients (``LLMServerClient`` for ``sync``,
``FullyAsyncLLMServerClient`` for ``colocate_async``) call it. Its server answers each prompt from a
scripted pool of responses, tokenized with the model's own tokenizer, with the log-probs of the weights
the actor last synced to it.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import ray
import torch

from verl.utils.torch_functional import logprobs_from_logits
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

ROLLOUT_NAME = "scripted"
"""``actor_rollout_ref.rollout.name`` of :class:`ScriptedReplica`."""
GENERATE_TIMEOUT_S = 300.0


def rollout_server_name(replica_rank: int) -> str:
    """Ray name of the scripted server of a replica (one per Ray session, reset for each run)."""
    return f"scripted_rollout_server_{replica_rank}"


@ray.remote(num_cpus=0)
class ScriptedRolloutServer:
    """A token-in token-out server that answers each prompt from its scripted pool, in turn.

    The script maps a question (found in the decoded prompt) to its pool; the k-th request for a
    question gets ``pool[k % len(pool)]``, so each group of ``len(pool)`` samples of one prompt gets
    the whole pool. Requests wait while the server sleeps (from ``sleep`` to the next weight update or
    ``resume_generation``), as a colocated vLLM server's do. Each answer carries the log-probs of the
    weights last synced to it (when asked, as vLLM's ``logprobs``) and their version
    (``extra_fields["global_steps"]``).

    One server per replica rank lives for the Ray session; :meth:`reset` starts each run afresh.
    """

    def __init__(self):
        self.model_path = None
        self.awake = asyncio.Event()

    async def reset(self, script: dict[str, list[str]], model_path: str, response_length: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.script = script
        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.response_length = response_length
        self.served: Counter = Counter()
        self.version = None
        self.events: list[tuple] = []
        self.awake.clear()

    def _question(self, prompt_ids: list[int]) -> str:
        text = self.tokenizer.decode(prompt_ids)
        matches = [question for question in self.script if question in text]
        if len(matches) != 1:
            raise ValueError(f"no single scripted question in prompt {text!r}: {matches}")
        return matches[0]

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, video_data=None, **kwargs):
        try:
            await asyncio.wait_for(self.awake.wait(), timeout=GENERATE_TIMEOUT_S)
        except TimeoutError as error:
            raise RuntimeError("generate called while the rollout server sleeps; no weight update woke it") from error
        question = self._question(list(prompt_ids))
        pool = self.script[question]
        response = pool[self.served[question] % len(pool)]
        self.served[question] += 1
        token_ids = self.tokenizer.encode(response, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        token_ids = token_ids[: min(self.response_length, sampling_params.get("max_tokens") or self.response_length)]
        log_probs = None
        if sampling_params.get("logprobs"):
            log_probs = self._log_probs(list(prompt_ids), token_ids, sampling_params.get("temperature") or 1.0)
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.version},
        )

    def _log_probs(self, prompt_ids: list[int], token_ids: list[int], temperature: float) -> list[float]:
        """Log-probs of the response under the synced weights, at the sampling temperature."""
        ids = torch.tensor([prompt_ids + token_ids])
        with torch.no_grad():
            logits = self.model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1 : -1]
        return logprobs_from_logits(logits / temperature, torch.tensor(token_ids)).tolist()

    async def update_weights(self, global_steps, state_dict=None):
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.version = global_steps
        self.events.append(("update_weights", global_steps))
        self.awake.set()

    async def sleep(self):
        self.events.append(("sleep",))
        self.awake.clear()

    async def wake_up(self):
        self.events.append(("wake_up",))
        self.awake.set()

    async def abort_all_requests(self, reject_request: bool = False):
        self.events.append(("abort",))

    async def resume_generation(self):
        self.events.append(("resume",))
        self.awake.set()

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None

    async def state(self) -> dict:
        return {"served": dict(self.served), "events": list(self.events), "version": self.version}


class ScriptedReplica(RolloutReplica):
    """A hybrid rollout replica whose server is a :class:`ScriptedRolloutServer`.

    Subclassed per run with the ``script`` (:func:`scripted_replica_class`); verl's
    ``LLMServerManager`` instantiates it from ``RolloutReplicaRegistry``. Its workers (the CPU actor
    ranks) push their weights to the server by its name, :func:`rollout_server_name`.
    """

    script: dict[str, list[str]] = {}

    async def launch_servers(self):
        name = rollout_server_name(self.replica_rank)
        server = ScriptedRolloutServer.options(name=name, get_if_exists=True).remote()
        await server.reset.remote(self.script, self.model_config.path, self.config.response_length)
        self.servers = [server]
        self._server_handle = server
        self._server_address = name


def scripted_replica_class(script: dict[str, list[str]]) -> type[ScriptedReplica]:
    """A :class:`ScriptedReplica` that serves ``script`` (question -> responses)."""
    return type("ScriptedReplica", (ScriptedReplica,), {"script": dict(script)})
