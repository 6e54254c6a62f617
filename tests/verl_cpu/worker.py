"""The FSDP actor/reference worker group of verl's v1 trainer, on CPU.

:func:`cpu_trainer_class` subclasses a registered trainer and overrides only ``_init_resource_pool_mgr``:
verl's own version builds the role mapping and the pool spec from the config, then the worker class
becomes :class:`CPUActorRefWorker` and the Ray placement groups are created without GPUs (verl's
``ResourcePoolManager.create_resource_pool`` hard-codes ``use_gpu=True``). ``RayWorkerGroup``, the
colocated ``WorkerDict``, verl's dispatch and its TransferQueue bridge are verl's.
"""

from __future__ import annotations

import copy
import functools
import os
from collections import defaultdict
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
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import build_attention_mask_from_nested

from verl_cpu.rollout import rollout_server_name

CHECKPOINT_FILE = "cpu_actor.pt"


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
        self.model = AutoModelForCausalLM.from_pretrained(model_config.local_path, dtype=torch.float32)
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
        positions = torch.nested.to_padded_tensor(
            micro_batch["position_ids"], padding=0, output_size=(batch_size, max_len)
        )
        mask = build_attention_mask_from_nested(input_ids, max_seq_len=max_len)
        logits = model(input_ids=padded, attention_mask=mask, position_ids=positions, use_cache=False).logits
        temperature = tu.get_non_tensor_data(micro_batch, "temperature", 1.0)
        logits = torch.cat([logits[i, :length] for i, length in enumerate(lengths.tolist())]) / temperature
        labels = torch.roll(input_ids.values(), shifts=-1, dims=0)
        output = {"log_probs": torch.nested.nested_tensor_from_jagged(logprobs_from_logits(logits, labels), offsets)}
        if calculate_entropy:
            output["entropy"] = torch.nested.nested_tensor_from_jagged(entropy_from_logits(logits), offsets)
        return output

    def _micro_batches(self, data: TensorDict, stage: str) -> list[TensorDict]:
        """verl's micro-batches of ``data`` for ``stage`` ("train", "log_prob" or "ref"), with the engine
        settings ActorRolloutRefWorker gives each engine, injected as TrainingWorker does when missing."""
        actor, rollout, ref = self.config.actor, self.config.rollout, self.config.ref
        use_dynamic_bsz, max_tokens, micro_batch_size = {
            "train": (actor.use_dynamic_bsz, actor.ppo_max_token_len_per_gpu, actor.ppo_micro_batch_size_per_gpu),
            "log_prob": (
                rollout.log_prob_use_dynamic_bsz,
                rollout.log_prob_max_token_len_per_gpu,
                rollout.log_prob_micro_batch_size_per_gpu,
            ),
            "ref": (
                ref.log_prob_use_dynamic_bsz,
                ref.log_prob_max_token_len_per_gpu,
                ref.log_prob_micro_batch_size_per_gpu,
            ),
        }[stage]
        defaults = dict(
            use_remove_padding=False,
            use_fused_kernels=False,
            use_dynamic_bsz=use_dynamic_bsz,
            max_token_len_per_gpu=max_tokens,
            micro_batch_size_per_gpu=micro_batch_size,
        )
        for key, value in defaults.items():
            if key not in data.keys():
                tu.assign_non_tensor(data, **{key: value})
        micro_batches, _ = prepare_micro_batches(data=data, dp_group=self.dp_group, same_micro_num_in_dp=True)
        return micro_batches

    def _infer(self, model, data: TensorDict, stage: str) -> TensorDict:
        calculate_entropy = tu.get_non_tensor_data(data, "calculate_entropy", False)
        outputs = []
        with torch.no_grad():
            for micro_batch in self._micro_batches(data, stage):
                outputs.append(self._forward(model, micro_batch, calculate_entropy))
        merged = {}  # nested (bsz, prompt + response) per key, rows in the order received
        for key in outputs[0]:
            rows = [row for out in outputs for row in out[key].unbind()]
            merged[key] = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
        return tu.get_tensordict(tensor_dict=merged, non_tensor_dict={"metrics": {}})

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        return self._infer(self.model, data, "log_prob")

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="ref"))
    def compute_ref_log_prob(self, data: TensorDict) -> TensorDict:
        return self._infer(self.ref_model, data, "ref")

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
                "mini_batch_size": tu.get_non_tensor_data(data, "mini_batch_size", None),
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
        for micro_batch in self._micro_batches(mini_batch, "train"):
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
        lr = self.optimizer.param_groups[0]["lr"]
        reduced.update(loss=float(sum(losses)), grad_norm=float(grad_norm), lr=lr, mfu=0.0)
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
        replica_size = (
            rollout.tensor_model_parallel_size * rollout.data_parallel_size * rollout.pipeline_model_parallel_size
        )
        server = ray.get_actor(rollout_server_name(self.rank // replica_size))
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
