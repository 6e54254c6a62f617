"""verl 0.9.1's own v1 training loop on CPU, for end-to-end tests.

verl's loop (``PPOTrainer.init`` / ``fit`` / ``step`` / ``_validate``, TransferQueue, the agent loop, the
reward-loop workers, the replay buffer, padding, batch balancing, checkpoints, metrics, the trackers)
runs on CPU. Two pieces cannot, and each is replaced through the narrowest hook verl offers:

* :mod:`verl_cpu.worker`: the FSDP actor/reference worker group. A registered trainer class is
  subclassed to override only ``_init_resource_pool_mgr``; verl's ``RayWorkerGroup``, dispatch and
  TransferQueue bridge then run a CPU worker.
* :mod:`verl_cpu.rollout`: the vLLM server. A replica registered in verl's ``RolloutReplicaRegistry``
  (``actor_rollout_ref.rollout.name=scripted``) answers from a scripted pool of responses; verl's load
  balancer and LLM clients are unchanged.

:mod:`verl_cpu.harness` starts a run the way ``python -m verl.trainer.main_ppo`` does. Ray workers import
these modules by name: ``tests/`` is on their ``PYTHONPATH`` (:func:`verl_cpu.harness.start_ray`).
"""
