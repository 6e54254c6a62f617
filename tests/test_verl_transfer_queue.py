"""The restrain trainer's advantage step through a real local TransferQueue (Ray, CPU), as in training.

Rollouts are put into TransferQueue the way verl's agent loop puts them (the dataset row's fields,
``extra_fields`` with the reward manager's output, per-token log-probs), the trainer is built with
verl's own ``__init__``, and its ``_compute_advantage`` reads from and writes to TransferQueue.
"""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_lm import make_tokenizer
from verl_batches import compose_config, default_groups, rollout_rows, rows_to_dataproto, score_batch, updated

from verl_restrain import defaults
from verl_restrain.adapters.step import restrain_advantage_step
from verl_restrain.adapters.trainer import RestrainColocateAsyncTrainer, RestrainTrainer


@pytest.fixture(scope="module")
def records():
    from verl.trainer.ppo.reward import load_reward_manager

    tokenizer = make_tokenizer()
    return score_batch(load_reward_manager(compose_config(), tokenizer), tokenizer, default_groups())


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.parquet"
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    pq.write_table(pa.table({"prompt": [prompt], defaults.REF_MAJORITY_COUNT_COLUMN: [16],
                             defaults.REF_NUM_SAMPLES_COLUMN: [16], defaults.REF_MAJORITY_ANSWER_COLUMN: ["5"]}), path)
    return str(path)


def _with_log_probs(rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for row in rows:
        length = row["response_mask"].numel()
        row["rollout_log_probs"] = -torch.rand(length, generator=generator)
        row["old_log_probs"] = row["rollout_log_probs"] + 0.01 * torch.randn(length, generator=generator)
    return rows


def _put(tq, keys, rows):
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    tags = [{"status": "success", "seq_len": row["response_mask"].numel()} for row in rows]
    tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(rows), tags=tags)
    return KVBatchMeta(partition_id="train", keys=keys, tags=tags)


def _get(tq, batch, field):
    return tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=[field])[field].to_padded_tensor(0.0)


def test_trainer_runs_verls_sync_loop_and_validates_first(train_file, monkeypatch):
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    sync = RestrainTrainer(compose_config(f"data.train_files={train_file}"))
    assert (sync.trainer_mode, sync.registered_mode) == ("sync", "restrain")
    assert type(sync.replay_buffer) is ReplayBuffer and sync.parameter_sync_step == 1
    colocate = RestrainColocateAsyncTrainer(
        compose_config(f"data.train_files={train_file}", "trainer.v1.trainer_mode=restrain_colocate_async")
    )
    assert (colocate.trainer_mode, colocate.registered_mode) == ("colocate_async", "restrain_colocate_async")
    assert type(colocate.replay_buffer) is ReplayBufferAsync

    # A bad config fails before verl's own __init__ builds anything.
    def too_late(self):
        raise AssertionError("verl's trainer __init__ ran before the RESTRAIN checks")

    monkeypatch.setattr(PPOTrainer, "_build_replay_buffer", too_late)
    with pytest.raises(ValueError, match="algorithm.restrain.kappa must be <= actor_rollout_ref.rollout.n = 8"):
        RestrainTrainer(compose_config(f"data.train_files={train_file}", "algorithm.restrain.kappa=12"))


@pytest.mark.parametrize("method", ["restrain", "srt_offline"])
def test_advantage_step_through_transfer_queue(transfer_queue, records, train_file, method):
    tq = transfer_queue
    keys, rows = rollout_rows(records, seed=3)
    rows = _with_log_probs(rows)
    batch = _put(tq, keys, rows)
    config = compose_config(f"data.train_files={train_file}", f"restrain_method={method}")
    trainer = RestrainTrainer(config)
    metrics = {}
    trainer._compute_advantage(batch, metrics)

    expected = rows_to_dataproto(rows)
    expected_metrics = restrain_advantage_step(expected, keys, config.algorithm)
    width = expected.batch["response_mask"].shape[1]
    fields = ["advantages", "returns", "token_level_rewards", "restrain_positive_advantages",
              "restrain_negative_advantages"]
    for field in fields:
        assert torch.equal(_get(tq, batch, field)[:, :width], expected.batch[field]), field
    # the parts the per-label actor loss reads add up to the combined advantage verl's metrics read
    torch.testing.assert_close(expected.batch[fields[3]] + expected.batch[fields[4]], expected.batch["advantages"])
    assert {name: value for name, value in metrics.items() if name.startswith("restrain/")} == expected_metrics
    # verl's rollout correction ran on the log-probs, as in verl's own advantage step.
    assert any(name.startswith("rollout_corr/") for name in metrics)
    tq.kv_clear(keys=batch.keys, partition_id="train")


def test_ttrl_through_transfer_queue_equals_verls_grpo_step(transfer_queue, records, train_file):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    tq = transfer_queue
    keys, rows = rollout_rows(records, seed=5)
    rows = _with_log_probs(rows)
    ttrl_batch = _put(tq, keys, rows)
    ttrl = RestrainTrainer(compose_config(f"data.train_files={train_file}", "restrain_method=ttrl"))
    ttrl._compute_advantage(ttrl_batch, {})
    ttrl_advantages = _get(tq, ttrl_batch, "advantages")
    ttrl_rewards = _get(tq, ttrl_batch, "token_level_rewards")

    # The same rollouts (other uids), scored with TTRL's reward, through verl's own trainer and GRPO.
    grpo_rows = [dict(row, uid=row["uid"] + "g", rm_scores=ttrl_rewards[i, : row["response_mask"].numel()])
                 for i, row in enumerate(rows)]
    grpo_keys = [key.replace("_", "g_", 1) for key in keys]
    grpo_batch = _put(tq, grpo_keys, grpo_rows)
    grpo_config = updated(compose_config(), {"algorithm.adv_estimator": "grpo", "trainer.v1.trainer_mode": "sync",
                                             "reward.reward_manager.name": "naive"})
    PPOTrainerSync(grpo_config)._compute_advantage(grpo_batch, {})
    torch.testing.assert_close(ttrl_advantages, _get(tq, grpo_batch, "advantages"), rtol=1e-5, atol=1e-6)
    assert ttrl_rewards.sum() == 5 + 4 + 3 + 1  # majority answers: 12 x5, 3 x4, B x3, 1 x1
    tq.kv_clear(keys=ttrl_batch.keys + grpo_batch.keys, partition_id="train")


def test_a_missing_dataset_column_fails_at_the_step(transfer_queue, records, train_file):
    tq = transfer_queue
    keys, rows = rollout_rows(records, seed=1)
    rows = [{name: value for name, value in row.items() if name != defaults.REF_NUM_SAMPLES_COLUMN} for row in rows]
    batch = _put(tq, keys, rows)
    trainer = RestrainTrainer(compose_config(f"data.train_files={train_file}"))
    with pytest.raises(ValueError, match=f"no field\\(s\\) \\['{defaults.REF_NUM_SAMPLES_COLUMN}'\\]"):
        trainer._compute_advantage(batch, {})
    tq.kv_clear(keys=batch.keys, partition_id="train")


class _WorkerGroup:
    """The parts of verl's actor worker group that batch balancing and the actor update call."""

    def __init__(self):
        self._dispatch_info = {"actor": [0]}  # one data-parallel rank
        self.updates = []

    def update_actor(self, batch):
        self.updates.append(batch)
        return {"metrics": {"mfu": [0.0], "pg_loss": [0.0]}}


def test_train_rollouts_votes_on_all_and_trains_on_the_first_n(transfer_queue, records, train_file):
    """TTRL's vote/train split: the vote uses all 8 rollouts of each prompt; the batch verl balances,
    scores and trains on holds the first 4 of each prompt (sampling order), with the 8-vote's values."""
    from types import SimpleNamespace

    tq = transfer_queue
    keys, rows = rollout_rows(records, seed=7)
    rows = _with_log_probs(rows)
    batch = _put(tq, keys, rows)
    config = compose_config(f"data.train_files={train_file}", "algorithm.restrain.train_rollouts=4",
                            "actor_rollout_ref.actor.ppo_mini_batch_size=2")
    trainer = RestrainTrainer(config)
    trainer.actor_rollout_wg = _WorkerGroup()
    trainer.tokenizer = SimpleNamespace(eos_token_id=0)
    trainer.global_steps = 1
    metrics = {}
    trained = trainer._balance_batch(batch, metrics)
    assert sorted(trained.keys) == sorted(k for k in keys if int(k.rsplit("_", 2)[1]) < 4)
    stored = set(tq.kv_list(partition_id="train").get("train", {}))
    assert set(trained.keys) <= stored and not (set(keys) - set(trained.keys)) & stored  # the rest left
    trainer._compute_advantage(trained, metrics)

    # The same values as the full 8-rollout step, on the trained rows.
    expected = rows_to_dataproto(rows)
    expected_metrics = restrain_advantage_step(expected, keys, config.algorithm, rollouts_per_prompt=8)
    position = {key: i for i, key in enumerate(keys)}
    got = _get(tq, trained, "advantages")
    for i, key in enumerate(trained.keys):
        length = rows[position[key]]["response_mask"].numel()
        assert torch.equal(got[i, :length], expected.batch["advantages"][position[key], :length]), key
    assert {name: value for name, value in metrics.items() if name.startswith("restrain/")} == expected_metrics

    # verl's actor update sees mini-batches of ppo_mini_batch_size * train_rollouts rows, and the
    # config is left as it was.
    trainer._update_actor(trained, {})
    assert trainer.actor_rollout_wg.updates[-1].extra_info["mini_batch_size"] == 2 * 4
    assert trainer.config.actor_rollout_ref.rollout.n == 8
    assert trainer._get_required_batch_multiple(1) == 2 * 4
    tq.kv_clear(keys=trained.keys, partition_id="train")
