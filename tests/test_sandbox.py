"""The CPU sandbox: policy, paired training loop on the package's estimator, reports and CLI."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import pytest
import torch

from verl_restrain import advantage, answers
from verl_restrain.methods import METHODS
from verl_restrain.sandbox import cli, loop, report, sweep
from verl_restrain.sandbox.policy import (
    PromptSetConfig,
    RoutePolicy,
    entropy,
    first_appearance_ids,
    make_prompts,
    sample_candidates,
)

QUICK = loop.SandboxConfig(
    steps=30, seeds=(0,), prompts=PromptSetConfig(num_prompts=64), num_heldout=64
)


@pytest.fixture(scope="module")
def quick_results():
    return loop.run(QUICK, progress=False)


# ---------------------------------------------------------------- policy


def test_prompt_set_matches_its_description():
    config = PromptSetConfig(num_prompts=2000, accuracy_range=(0.02, 0.5))
    prompts = make_prompts(config, torch.Generator().manual_seed(0))
    rows = torch.arange(config.num_prompts)
    probs = RoutePolicy(prompts.num_routes).log_probs(prompts).detach().exp()  # (P, K)
    accuracy = probs[rows, prompts.correct]

    # Exactly the correct candidate is on the sound route; the wrong ones use every shortcut.
    assert torch.equal((prompts.route == 0).nonzero()[:, 1], prompts.correct)
    assert set(prompts.route[prompts.route > 0].unique().tolist()) == {1, 2, 3, 4}
    # The initial pi(gold) is the uniform draw from accuracy_range.
    assert accuracy.min() >= 0.02 - 1e-9 and accuracy.max() <= 0.5 + 1e-9
    assert abs(accuracy.mean().item() - 0.26) < 0.02
    # The correct candidate sits at every position, so tie-breaking by position favours no one.
    assert torch.bincount(prompts.correct, minlength=16).min() > 0.03 * config.num_prompts

    # The spread the sandbox is built for: correct majorities, wrong majorities, rare correct answers.
    wrong_best = probs.scatter(1, prompts.correct[:, None], 0.0).max(dim=1).values
    assert (accuracy > wrong_best).float().mean() > 0.3
    assert (accuracy < wrong_best).float().mean() > 0.2
    assert (accuracy < 0.1).float().mean() > 0.1


def test_systematic_errors_put_every_trap_on_one_shortcut():
    config = PromptSetConfig(num_prompts=300, errors="systematic")
    prompts = make_prompts(config, torch.Generator().manual_seed(2))
    wrong_bias = prompts.bias.scatter(1, prompts.correct[:, None], -torch.inf)  # (P, K)
    trap = wrong_bias.argmax(dim=1)  # (P,)
    route = prompts.route
    assert bool((route.gather(1, trap[:, None]) == 1).all())
    assert int((route == 1).sum()) == config.num_prompts  # and no other candidate uses it
    assert torch.equal((route == 0).nonzero()[:, 1], prompts.correct)
    assert set(route[route > 1].unique().tolist()) == {2, 3, 4}
    # Only the route assignment differs from random errors: the same seed gives the same difficulty.
    random_errors = make_prompts(replace(config, errors="random"), torch.Generator().manual_seed(2))
    assert torch.allclose(random_errors.bias.sort(dim=1).values, prompts.bias.sort(dim=1).values)


def test_prompt_set_config_rejects_bad_values():
    with pytest.raises(ValueError, match="accuracy_range"):
        PromptSetConfig(accuracy_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="num_candidates"):
        PromptSetConfig(num_candidates=1)
    with pytest.raises(ValueError, match="errors"):
        PromptSetConfig(errors="clustered")
    with pytest.raises(ValueError, match="num_shortcuts >= 2"):
        PromptSetConfig(errors="systematic", num_shortcuts=1)


def test_shared_theta_moves_every_prompt_on_the_route():
    prompts = make_prompts(PromptSetConfig(num_prompts=50), torch.Generator().manual_seed(1))
    policy = RoutePolicy(prompts.num_routes)
    rows = torch.arange(50)
    before = policy.log_probs(prompts).detach().exp()[rows, prompts.correct]
    with torch.no_grad():
        policy.theta[0] = 1.0  # prefer the sound route
    after = policy.log_probs(prompts).detach().exp()[rows, prompts.correct]
    assert bool((after > before).all())


def test_sampling_follows_the_policy_and_is_paired():
    log_probs = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.1, 0.9]], dtype=torch.float64))
    sampled = sample_candidates(log_probs, 40000, torch.Generator().manual_seed(0))
    freq = torch.stack([torch.bincount(row, minlength=4) for row in sampled]).double() / 40000
    assert torch.allclose(freq, log_probs.exp(), atol=0.01)
    again = sample_candidates(log_probs, 40000, torch.Generator().manual_seed(0))
    assert torch.equal(sampled, again)


def test_answer_ids_follow_first_appearance_like_answer_clustering():
    generator = torch.Generator().manual_seed(3)
    sampled = torch.randint(0, 6, (5, 16), generator=generator)
    ids = first_appearance_ids(sampled)
    for row, id_row in zip(sampled.tolist(), ids.tolist()):
        clustered = answers.cluster_extracted([str(value) for value in row])
        # Same partition and same order of first appearance (ids differ only by a monotone map).
        dense = {old: new for new, old in enumerate(dict.fromkeys(id_row))}
        assert [dense[value] for value in id_row] == clustered


def test_entropy_of_uniform_and_point_mass():
    uniform = torch.full((1, 8), -math.log(8), dtype=torch.float64)
    assert entropy(uniform).item() == pytest.approx(math.log(8))
    point = torch.log(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert entropy(torch.nan_to_num(point, neginf=-1e30)).item() == pytest.approx(0.0)


def test_adam_matches_torch_optim():
    grads = [torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64) * (k + 1) for k in range(6)]
    ours = torch.zeros(3, dtype=torch.float64)
    theirs = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = loop.Optimizer("adam", 0.05, ours)
    reference = torch.optim.Adam([theirs], lr=0.05)
    for grad in grads:
        optimizer.step(grad)
        theirs.grad = grad.clone()
        reference.step()
    assert torch.allclose(ours, theirs.detach(), atol=1e-12)


# ---------------------------------------------------------------- advantages and reference


def test_reference_gives_prompt_weight_and_offline_label():
    setup = loop.make_setup(QUICK, 0)
    reference = setup.reference
    expected = advantage.prompt_weight(reference.majority_count, QUICK.n, QUICK.sigma, QUICK.center)
    assert torch.equal(reference.prompt_weight, expected)
    # The same reference sample, redrawn, has the recorded majority count and a majority answer
    # held by that many rollouts.
    with torch.no_grad():
        initial = RoutePolicy(setup.train.num_routes).log_probs(setup.train)
    sampled = sample_candidates(initial, QUICK.n, loop._generator(0, loop._REFERENCE_STREAM))
    counts = torch.stack([torch.bincount(row, minlength=16) for row in sampled])  # (P, K)
    assert torch.equal(counts.max(dim=1).values, reference.majority_count)
    assert torch.equal(counts.gather(1, reference.majority_answer[:, None]).squeeze(1), reference.majority_count)


def test_gold_grpo_is_grpo_on_the_gold_reward():
    setup = loop.make_setup(QUICK, 0)
    sampled = torch.randint(0, 16, (64, 16), generator=torch.Generator().manual_seed(5))
    estimate = loop.method_advantage(loop.GOLD_GRPO, sampled, setup, QUICK)
    reward = (sampled == setup.train.correct[:, None]).double()  # (P, n)
    expected = (reward - reward.mean(dim=1, keepdim=True)) / (reward.std(dim=1, keepdim=True) + 1e-6)
    assert torch.allclose(estimate.double(), expected.reshape(-1), atol=1e-5)


@pytest.mark.parametrize("name", [name for name in loop.SANDBOX_METHODS if name != loop.GOLD_GRPO])
def test_method_advantage_passes_the_preset(name, monkeypatch):
    setup = loop.make_setup(QUICK, 0)
    sampled = torch.randint(0, 16, (64, 16), generator=torch.Generator().manual_seed(6))
    seen = {}

    def spy(answer_ids, group_index, prompt_weight=None, **kwargs):
        seen.update(kwargs, prompt_weight=prompt_weight, answer_ids=answer_ids)
        return torch.zeros(answer_ids.shape, dtype=torch.float32)

    monkeypatch.setattr(advantage, "compute_restrain_advantage", spy)
    loop.method_advantage(name, sampled, setup, QUICK)
    method = METHODS[name]
    assert seen["weighting"] == method.weighting
    assert seen["kappa"] == method.kappa(QUICK.kappa)
    offline_weight = method.use_prompt_weight and method.prompt_weight_source == "offline"
    assert (seen["prompt_weight"] is not None) == offline_weight
    if offline_weight:
        assert torch.equal(seen["prompt_weight"], setup.reference.prompt_weight.repeat_interleave(16))
    # online prompt weights: u = g(M / n) of this step's own vote, computed by the estimator
    assert seen["online_prompt_weight"] == (method.use_prompt_weight and method.prompt_weight_source == "online")
    offline = sampled == setup.reference.majority_answer[:, None]
    if method.label_mode == "offline":
        assert torch.equal(seen["answer_ids"], advantage.fixed_label_answer_ids(offline.reshape(-1)))
    else:
        assert torch.equal(seen["answer_ids"], first_appearance_ids(sampled).reshape(-1))


def test_uniform_weighting_rewards_rare_answers_as_the_loop_docstring_says():
    # Counts {8, 4, 1, 1, 1, 1}, n = 16, m = 6, w_j = 1/6. Label stds sqrt(c (16 - c) / 240):
    # 0.5164, 0.4472, 0.25, so b_j = w_j / std_j = 0.3227, 0.3727, 0.6667 and the group term
    # sum_j b_j c_j / n = 0.3227 * 8/16 + 0.3727 * 4/16 + 4 * 0.6667 / 16 = 0.4212.
    # Advantages b_j - 0.4212: -0.0985 (majority), -0.0485 (4 votes), +0.2455 (single votes).
    counts = [8, 4, 1, 1, 1, 1]
    answer_ids = torch.tensor([answer for answer, count in enumerate(counts) for _ in range(count)])
    group_index = torch.zeros(16, dtype=torch.long)
    first = [0, 8, 12]  # a rollout of the majority, of the 4-vote answer, of a single vote

    def estimate(weighting, sigma=0.4, **kwargs):
        kwargs = dict(sigma=sigma, center=1.0, kappa=0, delta=0.5, **kwargs)
        return advantage.compute_restrain_advantage(answer_ids, group_index, weighting=weighting, **kwargs)

    uniform = estimate("uniform")[first]
    assert uniform.tolist() == pytest.approx([-0.0985, -0.0485, 0.2455], abs=1e-4)
    # Without the std division: 1/m - (1/m) sum_j c_j / n = 0 for every rollout.
    assert estimate("uniform", norm_adv_by_std=False).abs().max() < 1e-12
    # The default sigma favours the majority; a large sigma flattens g towards uniform weights.
    assert estimate("gaussian", sigma=0.4)[first].tolist() == pytest.approx([0.3188, -0.2461, -0.3916], abs=1e-4)
    assert estimate("gaussian", sigma=0.8)[first].tolist() == pytest.approx([-0.0193, -0.0629, 0.1015], abs=1e-4)
    assert estimate("gaussian", sigma=1.6)[first].tolist() == pytest.approx([-0.0807, -0.0502, 0.2116], abs=1e-4)
    assert torch.allclose(estimate("gaussian", sigma=100.0), estimate("uniform"), atol=1e-4)


# ---------------------------------------------------------------- training loop


def test_sandbox_calls_the_estimator_training_uses(monkeypatch):
    """Every method's advantages come from verl_restrain.advantage.compute_restrain_advantage."""
    real = advantage.compute_restrain_advantage
    calls: dict[str, int] = {}
    current = {}

    def counting(*args, **kwargs):
        calls[current["name"]] = calls.get(current["name"], 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(advantage, "compute_restrain_advantage", counting)
    setup = loop.make_setup(QUICK, 0)
    for name in loop.SANDBOX_METHODS:
        current["name"] = name
        loop.run_method(name, setup, QUICK)
    assert calls == {name: QUICK.steps for name in loop.SANDBOX_METHODS}


def test_sandbox_and_training_share_one_estimator_function():
    """Training's estimator and the sandbox reach the same function object, not a copy of it."""
    from verl_restrain.adapters import estimator

    assert estimator.compute_restrain_advantage is advantage.compute_restrain_advantage
    # The sandbox binds the module, not the function, so it looks the estimator up at call time
    # (which is what the monkeypatch tests above and below rely on).
    assert loop.advantage is advantage
    assert not hasattr(loop, "compute_restrain_advantage")


def test_estimator_output_is_what_drives_training(monkeypatch):
    """With the estimator replaced by zeros, no method can move the policy: there is no second copy."""
    monkeypatch.setattr(
        advantage,
        "compute_restrain_advantage",
        lambda answer_ids, *args, **kwargs: torch.zeros(answer_ids.shape, dtype=torch.float32),
    )
    setup = loop.make_setup(QUICK, 0)
    for name in loop.SANDBOX_METHODS:
        history = loop.run_method(name, setup, QUICK)
        assert len(set(history["pass1_heldout"])) == 1, name


def test_gold_grpo_improves_pass1(quick_results):
    history = quick_results[loop.GOLD_GRPO][0]
    assert history["pass1_heldout"][-1] > history["pass1_heldout"][0] + 0.15
    assert history["pass1_train"][-1] > history["pass1_train"][0] + 0.15
    assert history["entropy"][-1] < history["entropy"][0]


def test_every_method_runs_and_logs_its_metrics(quick_results):
    assert set(quick_results) == set(loop.SANDBOX_METHODS)
    for name, histories in quick_results.items():
        (history,) = histories
        assert set(history) == set(loop.METRICS)
        for metric, values in history.items():
            assert len(values) == QUICK.steps + 1, (name, metric)
            assert all(math.isfinite(value) for value in values), (name, metric)
        for metric in ("pass1_train", "pass1_heldout", "majority_accuracy", "penalized_share"):
            assert all(0.0 <= value <= 1.0 for value in history[metric]), (name, metric)
        penalizes = name != loop.GOLD_GRPO and METHODS[name].penalize
        if not penalizes:
            assert set(history["penalized_share"]) == {0.0}, name
    # Step 0 is the same initial policy for every method (paired runs).
    starts = {histories[0]["pass1_heldout"][0] for histories in quick_results.values()}
    assert len(starts) == 1
    # The initial policy has low-consistency prompts, so the penalising methods penalise some.
    assert quick_results["restrain"][0]["penalized_share"][0] > 0


def test_runs_are_deterministic_under_a_seed(quick_results):
    config = replace(QUICK, methods=("restrain", "ttrl"))
    again = loop.run(config, progress=False)
    for name in config.methods:
        assert again[name] == quick_results[name]
    other = loop.run(replace(config, seeds=(1,)), progress=False)
    assert other["restrain"] != quick_results["restrain"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown methods"):
        loop.SandboxConfig(methods=("ttrl", "nope"))
    with pytest.raises(ValueError, match="sigma"):
        loop.SandboxConfig(sigma=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        loop.SandboxConfig(optimizer="rmsprop")
    assert loop.SandboxConfig(optimizer="sgd").lr == loop.DEFAULT_LR["sgd"]


# ---------------------------------------------------------------- reports and CLI


def test_summary_and_table(quick_results):
    summary = report.summarize(quick_results)
    assert [row["method"] for row in summary] == list(quick_results)
    gold = summary[0]
    history = quick_results[loop.GOLD_GRPO][0]
    assert gold["pass1_heldout_final"] == [history["pass1_heldout"][-1], None]
    assert gold["pass1_heldout_peak"][0] == max(history["pass1_heldout"])
    table = report.markdown_table(summary, QUICK)
    assert table.count("\n| ") == len(loop.SANDBOX_METHODS) + 1
    assert f"{history['pass1_heldout'][-1]:.3f}" in table


def test_table_shows_the_penalised_share_over_steps_not_only_at_the_end(quick_results):
    summary = {row["method"]: row for row in report.summarize(quick_results)}
    shares = quick_results["restrain"][0]["penalized_share"]
    assert summary["restrain"]["penalized_share_mean"] == [pytest.approx(sum(shares) / len(shares)), None]
    # Penalization fires early on: the average is positive even where the final value is 0.
    assert summary["restrain"]["penalized_share_mean"][0] > 0
    assert summary[loop.GOLD_GRPO]["penalized_share_mean"][0] == 0
    table = report.markdown_table(list(summary.values()), QUICK)
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert "penalised: mean over steps" in columns and "penalised: final" in columns
    restrain_row = next(line for line in table.splitlines() if line.startswith("| restrain |"))
    cells = [cell.strip() for cell in restrain_row.strip("|").split("|")]
    assert len(cells) == len(columns)
    assert cells[columns.index("penalised: mean over steps")] == f"{summary['restrain']['penalized_share_mean'][0]:.3f}"
    # The settings line says what the columns measure.
    assert "averaged over steps" in table and "below kappa" in table


def test_quick_cli_writes_table_json_and_plot(tmp_path, capsys):
    start = time.perf_counter()
    assert cli.main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    elapsed = time.perf_counter() - start
    payload = json.loads((tmp_path / "sandbox.json").read_text())
    # Training itself takes about a second; the bound leaves room for plotting on a busy machine.
    assert payload["training_seconds"] < 10
    assert elapsed < 30
    assert payload["config"]["seeds"] == [0]
    assert set(payload["curves"]) == set(loop.SANDBOX_METHODS)
    assert "does not reproduce LLM numbers" in payload["note"]
    table = (tmp_path / "sandbox_table.md").read_text()
    assert table in capsys.readouterr().out
    assert (tmp_path / "sandbox.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_sweep_writes_heatmap(tmp_path):
    assert cli.main(["--quick", "--sweep", "kappa,delta", "--out", str(tmp_path), "--no-progress"]) == 0
    payload = json.loads((tmp_path / "sandbox_sweep.json").read_text())
    assert len(payload["points"]) == len(sweep.SWEEP_GRID["kappa"]) * len(sweep.SWEEP_GRID["delta"])
    # TTRL does not depend on the swept values: one reference for the whole grid.
    assert len({tuple(point["ttrl"]) for point in payload["points"]}) == 1
    assert (tmp_path / "sandbox_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sandbox_sweep.md").read_text().count("\n| ") == len(payload["points"])


@pytest.mark.parametrize("value", ["foo", "sigma,lr", "sigma,sigma", ","])
def test_bad_sweep_names_are_reported_with_the_valid_ones(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--sweep", value, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "argument --sweep: expected distinct comma-separated names from sigma, kappa, delta" in error
    assert repr(value) in error
    assert "invalid" not in error


def test_sweep_rejects_methods_it_would_not_train(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--sweep", "kappa", "--methods", "gold_grpo", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--sweep trains RESTRAIN at every grid point against TTRL; it takes no --methods" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # Without --sweep, --methods chooses the methods; without either, every method runs.
    assert cli.build_config(cli._parse_args(cli._parser(), ["--methods", "ttrl"])).methods == ("ttrl",)
    assert cli.build_config(cli._parse_args(cli._parser(), [])).methods == loop.SANDBOX_METHODS


def test_help_says_what_the_sweep_compares(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "train RESTRAIN at every point of the grid" in text
    assert "compare its final held-out pass@1 with TTRL's" in text


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--sweep", "sigma,lr", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["--methods", "ttrl,nope", "--out", str(tmp_path)])


def test_gold_grpo_is_described_as_a_labelled_baseline_not_a_ceiling():
    # Label-free methods can finish above it, so "upper reference" would misread the table.
    assert report.describe(loop.GOLD_GRPO) == "GRPO on the gold reward (uses labels)"
    assert "upper" not in report.describe(loop.GOLD_GRPO)


def test_sweep_title_names_what_the_cells_and_brackets_hold():
    title = report._sweep_title(0.98372, QUICK)
    assert "each cell is RESTRAIN's final held-out pass@1" in title
    assert "in brackets, its difference to TTRL's" in title
    assert "TTRL's final held-out pass@1 = 0.984" in title


@pytest.mark.parametrize(
    "argv, expected",
    [
        # --quick alone: its defaults.
        (["--quick"], {"steps": 40, "seeds": (0,), "num_prompts": 96, "num_heldout": 96}),
        # Options given on the command line win over --quick's defaults, in either order.
        (
            ["--quick", "--seeds", "3", "--steps", "5"],
            {"steps": 5, "seeds": (3,), "num_prompts": 96, "num_heldout": 96},
        ),
        (
            ["--prompts", "32", "--heldout", "16", "--quick"],
            {"steps": 40, "seeds": (0,), "num_prompts": 32, "num_heldout": 16},
        ),
        # Without --quick: the config's own defaults.
        (["--steps", "5"], {"steps": 5, "seeds": (0, 1, 2, 3, 4), "num_prompts": 256, "num_heldout": 256}),
    ],
)
def test_quick_changes_defaults_only(argv, expected):
    config = cli.build_config(cli._parse_args(cli._parser(), argv))
    actual = {
        "steps": config.steps,
        "seeds": config.seeds,
        "num_prompts": config.prompts.num_prompts,
        "num_heldout": config.num_heldout,
    }
    assert actual == expected
