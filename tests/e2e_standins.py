"""CPU stand-ins for the two GPU pieces of verl's v1 training loop (test helper).

verl 0.9.1's own loop (``PPOTrainer.init`` / ``fit`` / ``step`` / ``_validate``, TransferQueue, the agent
loop, the reward-loop workers, the replay buffer, padding, balancing, checkpoints, metrics) runs on CPU.
Two pieces cannot, and are replaced here, each through the narrowest hook verl offers:

* the FSDP worker group: :func:`cpu_trainer_class` subclasses a registered trainer and overrides only
  ``_init_resource_pool_mgr``. verl's own version builds the role mapping and the pool spec from the
  config; the subclass then swaps the worker class for :class:`CPUActorRefWorker` and creates the Ray
  placement groups without GPUs. Everything else (``RayWorkerGroup``, the colocated ``WorkerDict``,
  verl's dispatch and its TransferQueue bridge) is verl's.
* the vLLM server: :class:`ScriptedReplica`, registered in verl's ``RolloutReplicaRegistry`` as
  ``actor_rollout_ref.rollout.name=scripted``. verl's ``LLMServerManager`` launches it, its load
  balancer routes to it, and verl's own LLM clients (``LLMServerClient`` for ``sync``,
  ``FullyAsyncLLMServerClient`` for ``colocate_async``) call it. Its server answers each prompt from a
  scripted pool of responses, tokenized with the model's real tokenizer.

Ray workers import this module by name (``tests/`` is on their ``PYTHONPATH``), so it stays importable
without pytest.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import os
from collections import Counter, defaultdict
from typing import Any

import ray
import torch
from tensordict import TensorDict

from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.single_controller.ray.base import RayResourcePool, ResourcePoolManager
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.metric.utils import Metric
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.rollout.replica import RolloutReplica, TokenOutput
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import build_attention_mask_from_nested

ROLLOUT_NAME = "scripted"
"""``actor_rollout_ref.rollout.name`` of :class:`ScriptedReplica`."""
CHECKPOINT_FILE = "cpu_actor.pt"
GENERATE_TIMEOUT_S = 120.0


def rollout_server_name(worker_group_prefix: str, replica_rank: int) -> str:
    """Ray name of the scripted server colocated with a worker group's replica (as vLLM's hybrid server)."""
    return f"{worker_group_prefix}scripted_rollout_{replica_rank}"


# ----------------------------------------------------------------------------------------------------
# The actor / reference worker group.


def _values(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.values() if tensor.is_nested else tensor


def _rows(tensor: torch.Tensor) -> list[list]:
    """Each row of a nested (or padded) tensor as a list."""
    return [row.tolist() for row in tensor.unbind()] if tensor.is_nested else tensor.tolist()


def _column(data: TensorDict, key: str) -> list:
    """A per-row field (tensor, NonTensorStack or list) as a list."""
    value = data[key]
    return value.tolist() if hasattr(value, "tolist") else list(value)


class CPUActorRefWorker(Worker):
    """verl's ``ActorRolloutRefWorker`` for a tiny causal LM on CPU: the methods verl's v1 trainer calls.

    Data reaches it as verl's dispatch sends it: a ``KVBatchMeta`` chunk per data-parallel rank, which
    verl's ``register`` decorator (``tqbridge``) turns into a TensorDict of *every* TransferQueue field
    of those rows plus the batch's ``extra_info``. The engine work follows verl's FSDP engine
    (``workers/engine/fsdp/transformer_impl.py``) on the no-remove-padding path: verl's micro-batching
    (``prepare_micro_batches``), log-probs over the whole sequence as a nested tensor
    (``logprobs_from_logits`` on the rolled input ids), entropy when asked, and the loss called as the
    engine calls it, ``loss_fn(model_output=..., data=micro_batch, dp_group=...)``, with
    ``batch_num_tokens`` and ``dp_size`` set over the global mini-batch. Gradients are averaged over
    the data-parallel ranks (gloo) before a real AdamW step, as FSDP does.

    The loss is verl's default, ``functools.partial(ppo_loss, config=<ActorConfig>)``, built as verl's
    worker builds it, until the trainer installs another through :meth:`set_loss_fn`.

    Everything the actor receives is recorded (:meth:`received`).
    """

    def __init__(self, config, role: str, distillation_config=None, **kwargs):
        Worker.__init__(self)
        self.config = config
        self.role = role
        self.loss_fn = None
        self.records: list[dict] = []
        self.weights_versions: list[Any] = []
        self.saved: list[tuple[int, float]] = []
        self.loaded: list[float] = []

    # -- setup ---------------------------------------------------------------------------------------

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        from transformers import AutoModelForCausalLM

        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo", rank=self.rank, world_size=self.world_size)
        self.dp_group = torch.distributed.group.WORLD
        model_config = omega_conf_to_dataclass(self.config.model)
        torch.manual_seed(0)
        self.model = AutoModelForCausalLM.from_pretrained(model_config.local_path, torch_dtype=torch.float32)
        self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

        # As ActorRolloutRefWorker.init_model builds the actor's loss.
        actor_config = omega_conf_to_dataclass(self.config.actor)
        actor_config.model_config = model_config
        self.actor_config = actor_config
        self.loss_fn = functools.partial(ppo_loss, config=actor_config)
        optim = actor_config.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        self.pad_token_id = model_config.tokenizer.pad_token_id
        for mesh in ("actor", "ref"):
            self._register_dispatch_collect_info(mesh, dp_rank=self.rank, is_collect=True)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_loss_fn(self, loss_fn):
        self.loss_fn = loss_fn

    # -- forward -------------------------------------------------------------------------------------

    def _forward(self, model, micro_batch: TensorDict, calculate_entropy: bool) -> dict[str, torch.Tensor]:
        """Log-probs (and entropy) over every sequence position, nested (bsz, prompt + response)."""
        input_ids = micro_batch["input_ids"]
        offsets = input_ids.offsets()
        lengths = offsets.diff()
        batch_size, max_len = len(lengths), int(lengths.max())
        padded = torch.nested.to_padded_tensor(input_ids, padding=self.pad_token_id, output_size=(batch_size, max_len))
        positions = torch.nested.to_padded_tensor(micro_batch["position_ids"], padding=0, output_size=(batch_size, max_len))
        mask = build_attention_mask_from_nested(input_ids, max_seq_len=max_len)
        logits = model(input_ids=padded, attention_mask=mask, position_ids=positions, use_cache=False).logits
        temperature = tu.get_non_tensor_data(micro_batch, "temperature", 1.0)
        logits = torch.cat([logits[i, :length] for i, length in enumerate(lengths.tolist())]) / temperature
        labels = torch.roll(input_ids.values(), shifts=-1, dims=0)
        output = {"log_probs": torch.nested.nested_tensor_from_jagged(logprobs_from_logits(logits, labels), offsets)}
        if calculate_entropy:
            output["entropy"] = torch.nested.nested_tensor_from_jagged(entropy_from_logits(logits), offsets)
        return output

    def _micro_batches(self, data: TensorDict, train: bool) -> list[TensorDict]:
        # The engine settings TrainingWorker.train_batch / infer_batch inject when the batch lacks them.
        actor, rollout = self.config.actor, self.config.rollout
        defaults = dict(
            use_remove_padding=False,
            use_fused_kernels=False,
            use_dynamic_bsz=actor.use_dynamic_bsz,
            max_token_len_per_gpu=actor.ppo_max_token_len_per_gpu if train else rollout.log_prob_max_token_len_per_gpu,
            micro_batch_size_per_gpu=(
                actor.ppo_micro_batch_size_per_gpu if train else rollout.log_prob_micro_batch_size_per_gpu
            ),
        )
        for key, value in defaults.items():
            if key not in data.keys():
                tu.assign_non_tensor(data, **{key: value})
        micro_batches, _ = prepare_micro_batches(data=data, dp_group=self.dp_group, same_micro_num_in_dp=True)
        return micro_batches

    def _infer(self, model, data: TensorDict) -> TensorDict:
        calculate_entropy = tu.get_non_tensor_data(data, "calculate_entropy", False)
        outputs = []
        with torch.no_grad():
            for micro_batch in self._micro_batches(data, train=False):
                outputs.append(self._forward(model, micro_batch, calculate_entropy))
        merged = {
            key: torch.nested.as_nested_tensor([row for out in outputs for row in out[key].unbind()], layout=torch.jagged)
            for key in outputs[0]
        }
        return tu.get_tensordict(tensor_dict=merged, non_tensor_dict={"metrics": {}})

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        return self._infer(self.model, data)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="ref"))
    def compute_ref_log_prob(self, data: TensorDict) -> TensorDict:
        return self._infer(self.ref_model, data)

    # -- update --------------------------------------------------------------------------------------

    def _record(self, data: TensorDict) -> None:
        self.records.append(
            {
                "rank": self.rank,
                "call": len(self.records),
                "fields": sorted(data.keys()),
                "uid": _column(data, "uid"),
                "question": [messages[-1]["content"] for messages in _column(data, "raw_prompt")],
                "pred": [fields.get("reward_extra_info", {}).get("pred") for fields in _column(data, "extra_fields")],
                "session_id": [int(s) for s in _column(data, "session_id")],
                "global_steps": [int(s) for s in _column(data, "global_steps")],
                "responses": _rows(data["responses"]),
                "response_mask": _rows(data["response_mask"]),
                "advantages": _rows(data["advantages"]),
                "loss_fn": getattr(getattr(self.loss_fn, "func", self.loss_fn), "__qualname__", repr(self.loss_fn)),
            }
        )

    def _train_mini_batch(self, mini_batch: TensorDict) -> dict[str, float]:
        """One optimizer step, as verl's engine ``train_batch`` (zero grad, forward/backward, step)."""
        calculate_entropy = tu.get_non_tensor_data(mini_batch, "calculate_entropy", False)
        batch_num_tokens = _values(mini_batch["loss_mask"]).sum().clone()
        torch.distributed.all_reduce(batch_num_tokens, group=self.dp_group)
        tu.assign_non_tensor(mini_batch, batch_num_tokens=batch_num_tokens.item(), dp_size=self.world_size)

        self.model.train()
        self.optimizer.zero_grad()
        metrics: dict[str, list] = defaultdict(list)
        losses = []
        for micro_batch in self._micro_batches(mini_batch, train=True):
            model_output = self._forward(self.model, micro_batch, calculate_entropy)
            loss, loss_metrics = self.loss_fn(model_output=model_output, data=micro_batch, dp_group=self.dp_group)
            loss.backward()
            losses.append(loss.item())
            for key, value in loss_metrics.items():
                metrics[key].append(value)
        for parameter in self.model.parameters():
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.AVG, group=self.dp_group)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.actor_config.optim.clip_grad)
        self.optimizer.step()
        self.model.eval()

        reduced = {}
        for key, values in metrics.items():
            if isinstance(values[0], Metric):
                merged = Metric(values[0].aggregation)
                for value in values:
                    merged.extend(value)
                reduced[key] = float(merged.aggregate())
            else:
                reduced[key] = float(sum(float(v) for v in values) / len(values))
        # No FLOP counter on CPU: verl's trainer pops "mfu" from every actor update.
        reduced.update(loss=float(sum(losses)), grad_norm=float(grad_norm), lr=self.optimizer.param_groups[0]["lr"], mfu=0.0)
        return reduced

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data: TensorDict) -> TensorDict:
        """verl's ``TrainingWorker.train_mini_batch``: mini-batches for ``epochs``, one step each."""
        self._record(data)
        mini_batch_size = tu.pop(data, key="mini_batch_size", default=None)
        epochs = tu.pop(data, key="epochs", default=1)
        seed = tu.pop(data, key="seed", default=42)
        dataloader_kwargs = tu.pop(data, key="dataloader_kwargs", default={})
        assert mini_batch_size % self.world_size == 0, f"{mini_batch_size=} must divide by dp={self.world_size}"
        iterator = tu.make_iterator(
            data,
            mini_batch_size=mini_batch_size // self.world_size,
            epochs=epochs,
            seed=seed + self.rank,
            dataloader_kwargs=dataloader_kwargs,
        )
        metrics: dict[str, list] = defaultdict(list)
        for mini_batch in iterator:
            for key, value in self._train_mini_batch(mini_batch).items():
                metrics[key].append(value)
        return tu.get_tensordict(tensor_dict={}, non_tensor_dict={"metrics": dict(metrics)})

    # -- weights -------------------------------------------------------------------------------------

    def _checksum(self) -> float:
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def update_weights(self, global_steps: int | None = None, mode: str = "auto"):
        """verl's hybrid weight sync: hand the weights and their version to the colocated server."""
        rollout = self.config.rollout
        replica_size = rollout.tensor_model_parallel_size * rollout.data_parallel_size * rollout.pipeline_model_parallel_size
        server = ray.get_actor(rollout_server_name(os.environ["WG_PREFIX"], self.rank // replica_size))
        self.weights_versions.append(global_steps)
        state_dict = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}
        ray.get(server.update_weights.remote(global_steps, state_dict))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        if self.rank == 0:
            os.makedirs(local_path, exist_ok=True)
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": global_step}
            torch.save(state, os.path.join(local_path, CHECKPOINT_FILE))
        torch.distributed.barrier(group=self.dp_group)
        self.saved.append((global_step, self._checksum()))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        state = torch.load(os.path.join(local_path, CHECKPOINT_FILE), weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loaded.append(self._checksum())

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def received(self) -> dict:
        """What this rank received (one record per ``update_actor`` call), synced and saved, loaded weights."""
        return {
            "records": self.records,
            "weights_versions": self.weights_versions,
            "saved": self.saved,
            "loaded": self.loaded,
            "checksum": self._checksum(),
        }


class CPUResourcePoolManager(ResourcePoolManager):
    """verl's pool manager with CPU placement groups (verl's own hard-codes ``use_gpu=True``)."""

    def create_resource_pool(self):
        for name, process_on_nodes in self.resource_pool_spec.items():
            self.resource_pool_dict[name] = RayResourcePool(
                process_on_nodes=process_on_nodes, use_gpu=False, max_colocate_count=1, name_prefix=name
            )


class CPUWorkerGroupMixin:
    """Overrides only ``_init_resource_pool_mgr``: verl's mapping and pool spec, the CPU worker and pools."""

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        self.role_worker_mapping = {role: ray.remote(CPUActorRefWorker) for role in self.role_worker_mapping}
        self.resource_pool_manager = CPUResourcePoolManager(
            resource_pool_spec=self.resource_pool_manager.resource_pool_spec, mapping=self.mapping
        )


def cpu_trainer_class(trainer_cls: type) -> type:
    """``trainer_cls`` (as ``get_trainer_cls`` returns it) with the CPU worker group."""
    return type(f"CPU{trainer_cls.__name__}", (CPUWorkerGroupMixin, trainer_cls), {})


# ----------------------------------------------------------------------------------------------------
# The rollout.


@ray.remote(num_cpus=0)
class ScriptedRolloutServer:
    """A token-in token-out server that answers each prompt from its scripted pool, in turn.

    ``script`` maps a question (found in the decoded prompt) to its pool; the k-th request for a
    question gets ``pool[k % len(pool)]``, so each group of ``len(pool)`` samples of one prompt gets
    the whole pool. Requests wait while the server sleeps (between ``sleep`` and the next weight
    update), as a colocated vLLM server does; each answer reports the weights version it was
    generated with (``extra_fields["global_steps"]``).
    """

    def __init__(self, script: dict[str, list[str]], model_path: str, response_length: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.script = script
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
        self.response_length = response_length
        self.served: Counter = Counter()
        self.version = None
        self.awake = asyncio.Event()
        self.events: list[tuple] = []

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
        log_probs = self._log_probs(list(prompt_ids), token_ids, sampling_params) if sampling_params.get("logprobs") else None
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.version},
        )

    def _log_probs(self, prompt_ids: list[int], token_ids: list[int], sampling_params: dict) -> list[float]:
        """Log-probs of the response under the synced weights, at the sampling temperature (as vLLM reports)."""
        ids = torch.tensor([prompt_ids + token_ids])
        with torch.no_grad():
            logits = self.model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1 : -1]
        temperature = sampling_params.get("temperature") or 1.0
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
    ``LLMServerManager`` instantiates it from ``RolloutReplicaRegistry``.
    """

    script: dict[str, list[str]] = {}

    async def init_hybrid(self, worker_group):
        self.worker_group_prefix = worker_group.name_prefix
        await super().init_hybrid(worker_group)

    async def launch_servers(self):
        name = rollout_server_name(self.worker_group_prefix, self.replica_rank)
        server = ScriptedRolloutServer.options(name=name).remote(
            self.script, self.model_config.path, self.config.response_length
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = name


def scripted_replica_class(script: dict[str, list[str]]) -> type[ScriptedReplica]:
    return type("ScriptedReplica", (ScriptedReplica,), {"script": dict(script)})
