"""The per-label actor loss inside verl's own ppo_loss, on micro-batches laid out as verl's engine lays them out.

A micro-batch reaches the loss as nested (jagged) per-token fields and a model output over the whole
sequence (prompt and response), as in ``verl.workers.utils.losses.ppo_loss``. Because verl aggregates
a linear function of the token-loss matrix, the per-label loss must equal, for every aggregation
mode, verl's own ``ppo_loss`` on the positive part plus on the negative part minus on a zero
advantage (which leaves the KL and entropy terms counted once).
"""

import functools
import pickle

import pytest
import torch
from tensordict import TensorDict
from verl_batches import compose_config

from verl_restrain.adapters.actor_loss import (
    NEGATIVE_FIELD,
    POSITIVE_FIELD,
    compute_policy_loss_per_label,
    per_label_config,
    restrain_ppo_loss,
)

LOSS_AGG_MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _actor_config(loss_agg_mode="token-mean", **overrides):
    from verl.utils.config import omega_conf_to_dataclass

    values = [f"actor_rollout_ref.actor.loss_agg_mode={loss_agg_mode}", "actor_rollout_ref.actor.use_kl_loss=true",
              "actor_rollout_ref.actor.entropy_coeff=0.01", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
              *[f"actor_rollout_ref.actor.{key}={value}" for key, value in overrides.items()]]
    return omega_conf_to_dataclass(compose_config(*values).actor_rollout_ref.actor)


def _nested(rows):
    return torch.nested.nested_tensor(rows, layout=torch.jagged)


def _micro_batch(seed=0, one_part=False, far=False):
    """(model_output, data): 5 rollouts, prompts of 3-6 and responses of 2-9 tokens, random parts."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(3, 7, (5,), generator=generator).tolist()
    response_lens = torch.randint(2, 10, (5,), generator=generator).tolist()

    def per_token(scale=1.0, shift=0.0):
        return _nested([shift + scale * torch.randn(n, generator=generator) for n in response_lens])

    positive = [torch.rand(1, generator=generator).expand(n).clone() for n in response_lens]
    negative = [-torch.rand(1, generator=generator).expand(n).clone() for n in response_lens]
    if one_part:  # one-hot weights: each rollout has one part only
        for i in range(5):
            (negative if i % 2 else positive)[i] = torch.zeros(response_lens[i])
    old = per_token(0.3, -1.0)
    new_values = torch.cat(
        [torch.cat([torch.zeros(p), o + (2.0 if far else 0.05) * torch.randn(len(o), generator=generator)])
         for p, o in zip(prompt_lens, old.unbind(), strict=True)]
    ).requires_grad_()
    data = TensorDict(
        {
            "prompts": _nested([torch.ones(p, dtype=torch.long) for p in prompt_lens]),
            "responses": _nested([torch.ones(n, dtype=torch.long) for n in response_lens]),
            "response_mask": _nested([torch.ones(n, dtype=torch.long) for n in response_lens]),
            "old_log_probs": old,
            "ref_log_prob": per_token(0.3, -1.0),
            "advantages": _nested([p + n for p, n in zip(positive, negative, strict=True)]),
            POSITIVE_FIELD: _nested(positive),
            NEGATIVE_FIELD: _nested(negative),
        },
        batch_size=5,
    )
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=sum(response_lens), global_batch_size=5)
    offsets = torch.tensor([0, *torch.tensor([p + n for p, n in zip(prompt_lens, response_lens)]).cumsum(0).tolist()])
    log_probs = torch.nested.nested_tensor_from_jagged(new_values, offsets)
    entropy = torch.nested.nested_tensor_from_jagged(torch.rand(len(new_values), generator=generator), offsets)
    return {"log_probs": log_probs, "entropy": entropy}, data, new_values


def _verl_ppo_loss(config, model_output, data, advantages):
    from verl.workers.utils.losses import ppo_loss

    data = data.copy()
    data["advantages"] = advantages
    for field in (POSITIVE_FIELD, NEGATIVE_FIELD):
        del data[field]
    return ppo_loss(config, model_output, data)


def _installed(config):
    return functools.partial(restrain_ppo_loss, config=config, per_label=per_label_config(config))


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("far", [False, True])
def test_per_label_loss_is_verls_ppo_loss_on_each_part(loss_agg_mode, far):
    config = _actor_config(loss_agg_mode)
    model_output, data, new_values = _micro_batch(seed=3, far=far)
    loss, metrics = _installed(config)(model_output=model_output, data=data)
    grad = torch.autograd.grad(loss, new_values)[0]

    zero = _nested([torch.zeros(len(a)) for a in data["advantages"].unbind()])
    parts = [_verl_ppo_loss(config, model_output, data, data[field])[0] for field in (POSITIVE_FIELD, NEGATIVE_FIELD)]
    reference = parts[0] + parts[1] - _verl_ppo_loss(config, model_output, data, zero)[0]
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, torch.autograd.grad(reference, new_values)[0], rtol=1e-5, atol=1e-6)
    # verl's ppo_loss kept its own parts: KL and entropy terms, metrics, and the per-part clip fractions
    assert {"kl_loss", "actor/entropy_loss", "actor/pg_loss", "actor/pg_clipfrac_positive",
            "actor/pg_clipfrac_negative"} <= set(metrics)
    assert config.policy_loss.loss_mode == "vanilla"  # the installed copy changed, not verl's config


def test_the_per_label_loss_differs_from_the_combined_clip_once_ratios_leave_the_range():
    config = _actor_config()
    model_output, data, _ = _micro_batch(seed=4, far=True)
    per_label = _installed(config)(model_output=model_output, data=data)[0]
    combined = _verl_ppo_loss(config, model_output, data, data["advantages"])[0]
    assert not torch.allclose(per_label, combined)


def test_one_hot_weights_give_verls_loss_on_the_combined_advantage():
    config = _actor_config()
    model_output, data, _ = _micro_batch(seed=5, one_part=True, far=True)
    per_label = _installed(config)(model_output=model_output, data=data)[0]
    combined = _verl_ppo_loss(config, model_output, data, data["advantages"])[0]
    torch.testing.assert_close(per_label, combined, rtol=1e-6, atol=1e-7)


def test_clip_mode_combined_is_verls_ppo_loss_unchanged():
    """Without the part fields (clip_mode=combined) the installed loss is verl's ppo_loss, bit for bit."""
    config = _actor_config()
    model_output, data, _ = _micro_batch(seed=6, far=True)
    combined = data.copy()
    for field in (POSITIVE_FIELD, NEGATIVE_FIELD):
        del combined[field]
    loss, metrics = _installed(config)(model_output=model_output, data=combined)
    expected, expected_metrics = _verl_ppo_loss(config, model_output, data, data["advantages"])
    assert torch.equal(loss, expected)
    assert set(metrics) == set(expected_metrics)


def test_the_installed_loss_travels_to_ray_workers():
    loss_fn = _installed(_actor_config())
    restored = pickle.loads(pickle.dumps(loss_fn))
    model_output, data, _ = _micro_batch(seed=7)
    torch.testing.assert_close(restored(model_output=model_output, data=data)[0],
                               loss_fn(model_output=model_output, data=data)[0])


def test_the_registered_policy_loss_refuses_a_plain_advantage():
    config = _actor_config()
    with pytest.raises(ValueError, match="installed by the restrain trainer"):
        compute_policy_loss_per_label(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3),
                                      config=config)


def test_the_trainer_installs_the_loss_with_verls_set_loss_fn(monkeypatch):
    """on_init_end installs restrain_ppo_loss in the actor worker group for clip_mode=per_label only."""
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from verl_restrain.adapters.checks import validate_training_config
    from verl_restrain.adapters.trainer import RestrainTrainer

    installed = []

    class WorkerGroup:
        def set_loss_fn(self, loss_fn):
            installed.append(loss_fn)

    monkeypatch.setattr(PPOTrainerSync, "on_init_end", lambda self: None)
    for clip_mode, expected in [("per_label", 1), ("combined", 0)]:
        installed.clear()
        trainer = object.__new__(RestrainTrainer)
        trainer.config = compose_config("algorithm.restrain.use_prompt_weight=false",
                                        f"algorithm.restrain.clip_mode={clip_mode}",
                                        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1")
        trainer.restrain = validate_training_config(trainer.config)
        trainer.actor_rollout_wg = WorkerGroup()
        trainer.on_init_end()
        assert len(installed) == expected
    trainer.config = compose_config("algorithm.restrain.use_prompt_weight=false",
                                    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1")
    trainer.restrain = validate_training_config(trainer.config)
    trainer.on_init_end()
    assert installed[-1].func is restrain_ppo_loss
    assert installed[-1].keywords["per_label"].policy_loss.loss_mode == "restrain_per_label"
