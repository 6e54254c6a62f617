"""Start verl's v1 training loop as ``python -m verl.trainer.main_ppo`` does, on CPU.

* :func:`main_checks`: what verl's ``main`` checks before Ray (``auto_set_device``, ``validate_config``)
  and the RESTRAIN startup checks (``validate_training_config``).
* :func:`start_ray`: verl's ``run_ppo`` Ray start, with ``tests/`` on the workers' path.
* :func:`run_task`: ``TaskRunnerV1.run``, step by step (``get_trainer_cls``, TransferQueue init, the
  trainer's ``init``, ``AgentLoopManagerTQ.create``, ``fit``), in this process, with the CPU worker
  group (:mod:`verl_cpu.worker`) and the scripted rollout (:mod:`verl_cpu.rollout`). It returns what the
  actor received, the rollout server's log and the ``file`` logger's lines, then removes every actor
  the run started (``TaskRunnerV1`` exits its process instead).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from omegaconf import DictConfig, OmegaConf

ROW_KEYS = ("uid", "question", "pred", "session_id", "global_steps", "responses", "response_mask", "advantages")
TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent


def compose(overrides: list[str]) -> DictConfig:
    """verl's ppo_trainer + restrain_trainer.yaml, composed by Hydra as the README's command does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from verl_restrain.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose("restrain_trainer", overrides=overrides)


def main_checks(config: DictConfig) -> None:
    """What ``verl.trainer.main_ppo.main`` checks before Ray starts, and the RESTRAIN startup checks."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from verl_restrain.adapters.checks import validate_training_config
    from verl_restrain.adapters.settings import ESTIMATOR_NAME

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if config.algorithm.adv_estimator == ESTIMATOR_NAME:
        validate_training_config(config)


def start_ray(config: DictConfig) -> None:
    """verl's ``run_ppo`` Ray start, with ``tests/`` on the workers' path (they import :mod:`verl_cpu`)."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    runtime_env = get_ppo_ray_runtime_env(config)
    if config.transfer_queue.enable:
        runtime_env.setdefault("env_vars", {})["TRANSFER_QUEUE_ENABLE"] = "1"
    path = [str(TESTS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    runtime_env.setdefault("env_vars", {})["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    ray_init = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}))
    ray_init["runtime_env"] = OmegaConf.to_container(OmegaConf.merge(runtime_env, ray_init.get("runtime_env", {})))
    ray.init(**ray_init)


@dataclass
class RunResult:
    """What one training run left behind.

    Attributes:
        trainer: the trainer object (its actors are gone).
        log: the ``file`` logger's lines, ``{"step": int, "data": {metric: value}}``.
        received: per actor rank, :meth:`verl_cpu.worker.CPUActorRefWorker.received`.
        server: per rollout server, :meth:`verl_cpu.rollout.ScriptedRolloutServer.state`.
    """

    trainer: object
    log: list[dict]
    received: list[dict]
    server: list[dict]

    def metrics(self, step: int) -> dict:
        """Every metric verl logged at ``step`` (merged over the lines of that step)."""
        merged = {}
        for line in self.log:
            if line["step"] == step:
                merged.update(line["data"])
        return merged

    def actor_rows(self) -> list[dict]:
        """One dict per row the actor trained on, over all ranks and steps (with its rank and call)."""
        rows = []
        for rank_state in self.received:
            for record in rank_state["records"]:
                for i in range(len(record["uid"])):
                    rows.append(
                        {
                            "rank": record["rank"],
                            "call": record["call"],
                            "fields": record["fields"],
                            "loss_fn": record["loss_fn"],
                            "mini_batch_size": record["mini_batch_size"],
                            **{key: record[key][i] for key in ROW_KEYS},
                        }
                    )
        return rows


def _wait_until_gone(name: str, namespace: str, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        time.sleep(0.2)
    raise TimeoutError(f"actor {namespace}/{name} still alive {timeout_s}s after it was killed")


def _teardown(trainer, agent_loop_manager) -> None:
    """Kill every actor and placement group the run created (TaskRunnerV1 exits its process instead)."""
    handles = []
    if agent_loop_manager is not None:
        handles += list(getattr(agent_loop_manager, "agent_loop_workers", []))
    if trainer is not None:
        reward = getattr(trainer, "reward_loop_manager", None)
        handles += list(getattr(reward, "reward_loop_workers", None) or [])
        servers = getattr(trainer, "llm_server_manager", None)
        if servers is not None:
            handles.append(servers.global_load_balancer)  # the scripted servers live on, reset per run
        worker_group = getattr(trainer, "actor_rollout_wg", None)
        handles += list(getattr(worker_group, "workers", []))
    for handle in handles:
        ray.kill(handle, no_restart=True)
    pools = getattr(getattr(trainer, "resource_pool_manager", None), "resource_pool_dict", {})
    for pool in pools.values():
        for pg in pool.pgs or []:
            ray.util.remove_placement_group(pg)


def clear_transfer_queue() -> None:
    """Remove every key a run left in TransferQueue (async runs leave prefetched groups behind)."""
    import transfer_queue as tq

    for partition_id, items in (tq.kv_list() or {}).items():
        if items:
            tq.kv_clear(keys=list(items), partition_id=partition_id)


def close_transfer_queue() -> None:
    import transfer_queue as tq

    tq.close()
    _wait_until_gone("TransferQueueController", "transfer_queue")


def run_task(config: DictConfig, script: dict[str, list[str]], log_path: Path) -> RunResult:
    """``TaskRunnerV1.run(config)``, with the CPU stand-ins; returns what the run left behind.

    ``tq.init`` creates TransferQueue on the first run and connects to it afterwards (as every verl
    process does); between runs it is emptied instead of closed, the way one Ray instance is shared.
    """
    import transfer_queue as tq

    from verl.trainer.ppo.v1 import AgentLoopManagerTQ, get_trainer_cls
    from verl.utils.logging_utils import configure_verl_logging
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from verl_cpu.rollout import ROLLOUT_NAME, scripted_replica_class
    from verl_cpu.worker import cpu_trainer_class

    configure_verl_logging()
    trainer_cls = get_trainer_cls(config.trainer.v1.trainer_mode)
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: scripted_replica_class(script))
    config.transfer_queue.enable = True
    OmegaConf.resolve(config)
    os.environ["VERL_FILE_LOGGER_PATH"] = str(log_path)

    tq.init(config.transfer_queue)
    trainer = agent_loop_manager = None
    succeeded = False
    try:
        trainer = cpu_trainer_class(trainer_cls)(config=config)
        trainer.init()
        agent_loop_manager = AgentLoopManagerTQ.create(
            config=config,
            llm_client=trainer.get_llm_client(),
            teacher_client=trainer.get_teacher_client(),
            reward_loop_worker_handles=trainer.get_reward_handles(),
        )
        trainer.fit(agent_loop_manager)
        succeeded = True
        received = trainer.actor_rollout_wg.received()
        server = [
            ray.get(server.state.remote())
            for replica in trainer.llm_server_manager.get_replicas()
            for server in replica.servers
        ]
    finally:
        try:
            tracking = getattr(trainer, "logger", None)
            if tracking is not None:
                tracking.finish(exit_code=0 if succeeded else 1)
        finally:
            os.environ.pop("VERL_FILE_LOGGER_PATH", None)
            _teardown(trainer, agent_loop_manager)
            clear_transfer_queue()
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return RunResult(trainer=trainer, log=log, received=received, server=server)
