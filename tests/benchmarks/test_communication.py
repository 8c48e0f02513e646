"""benchmarks/communication.py: every arm changes what it says, and the summary reads the files a run writes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agents.config import load_config
from benchmarks import communication as comm


@pytest.mark.parametrize("arm", [*comm.ARMS, "cost0.1"])
def test_each_arm_loads_and_changes_only_its_keys(arm: str) -> None:
    config_path, _, task_overrides = comm._task("predator_prey_vision0_nostate")
    base = load_config(config_path, list(task_overrides))
    changed = load_config(config_path, [*task_overrides, *comm.arm_overrides(arm)])
    assert base.env.options.vision == 0 and not base.env.use_state
    model, training = changed.model, changed.training
    expected = {
        "learned": (True, 0.4, True, "uniform", 1.0),
        "learned_dec": (True, 0.4, True, "uniform", 1.0),
        "learned_nogates": (True, 0.4, False, "uniform", 1.0),
        "dense": (True, 1.0, False, "uniform", 1.0),  # and k = None: every task's dense hears everyone (below)
        "random": (True, 0.4, False, "random", 0.0),
        "no_comm": (False, 0.4, True, "uniform", 1.0),
        "cost0.1": (True, 0.4, True, "uniform", 1.0),
    }[arm]
    graph = model.graph
    got = (model.communicate, graph.sparsity, model.gates.enabled, graph.init, training.graph_freeze_fraction)
    assert got == expected
    assert model.decoder == ("autoregressive" if arm == "learned_dec" else "none")
    assert model.gates.cost_weight == (0.1 if arm == "cost0.1" else base.model.gates.cost_weight)


@pytest.mark.parametrize("task", [t for t in comm.TASKS if not t.startswith("smax")])
def test_on_every_task_dense_hears_everyone_and_random_keeps_the_learned_arms_k(task: str) -> None:
    from agents.build import probe_env

    config_path, _, task_overrides = comm._task(task)
    learned = load_config(config_path, list(task_overrides))
    n = probe_env(learned).n_agents
    k = learned.model.graph.senders(n)
    for arm, senders in (("dense", n - 1), ("random", k), ("learned_nogates", k), ("learned_dec", k)):
        config = load_config(config_path, [*task_overrides, *comm.arm_overrides(arm)])
        assert config.model.graph.senders(n) == senders, arm


def test_unknown_arms_and_tasks_are_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unknown arm 'costly'"):
        comm.arm_overrides("costly")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown arm 'cost-1'"):
        comm.arm_overrides("cost-1")
    with pytest.raises(SystemExit, match="unknown task 'chess'"):
        comm._task("chess")


def _write_run(
    out: Path, stem: str, success: list[float], messages: float, win: float, given: dict | None = None
) -> None:
    rows = ["env_steps,return_per_agent,wall_s,success,episode_len,messages_per_step"]
    rows += [f"{(i + 1) * 100_000},-0.5,{i},{s},10,{messages}" for i, s in enumerate(success)]
    (out / f"{stem}.csv").write_text("\n".join(rows) + "\n")
    greedy = {"win_rate": win, "return_mean": -0.4, "episode_len_mean": 9.0, "messages_per_step": messages}
    if given is not None:
        greedy |= {"gate_open_rate": 0.5, "gate_open_rate_given": given}
    (out / f"{stem}_greedy.json").write_text(json.dumps(greedy))


def test_the_summary_reads_the_runs_and_compares_messages_with_dense(tmp_path: Path) -> None:
    _write_run(tmp_path, "t_learned_seed0", [0.2, 0.5, 0.8, 0.9], messages=1.5, win=0.9)
    _write_run(tmp_path, "t_dense_seed0", [0.3, 0.6, 0.9, 0.95], messages=6.0, win=0.95)
    _write_run(tmp_path, "t_cost0.1_seed0", [0.1, 0.3, 0.5, 0.6], messages=0.5, win=0.6)
    text = comm.summarize(["t"], tmp_path)
    learned = next(line for line in text.splitlines() if line.startswith("| learned |"))
    assert "| 0.90 | -0.40 | 9.0 | 1.50 | 25% |" in learned
    assert any(line.startswith("| cost0.1 |") for line in text.splitlines())
    assert (tmp_path / "t_success.png").stat().st_size > 0 and (tmp_path / "t_front.png").stat().st_size > 0


def test_the_summary_pools_the_conditional_gate_rates_over_seeds_by_agent_steps(tmp_path: Path) -> None:
    def given(if_true: float, n_true: int, if_false: float, n_false: int) -> dict:
        rates = {"true": if_true, "false": if_false, "agent_steps_true": n_true, "agent_steps_false": n_false}
        return {"saw_prey": rates}

    _write_run(tmp_path, "t_learned_seed0", [0.9], messages=1.0, win=0.9, given=given(0.2, 100, 1.0, 300))
    _write_run(tmp_path, "t_learned_seed1", [0.9], messages=1.0, win=0.9, given=given(0.6, 300, 0.5, 100))
    _write_run(tmp_path, "t_no_comm_seed0", [0.1], messages=0.0, win=0.1)
    lines = comm.summarize(["t"], tmp_path).splitlines()
    assert "| arm | greedy gates open | open if saw_prey | open if not saw_prey |" in lines
    # by hand: (0.2 * 100 + 0.6 * 300) / 400 = 0.5; (1.0 * 300 + 0.5 * 100) / 400 = 0.875
    assert "| learned | 0.50 | 0.50 (400) | 0.88 (400) |" in lines
    assert not any(line.startswith("| no_comm | 0.") and "(" in line for line in lines)  # no gates, no row


def test_the_summary_sets_the_greedy_success_beside_the_ones_with_gates_and_actions_drawn(tmp_path: Path) -> None:
    _write_run(tmp_path, "t_learned_seed0", [0.9], messages=1.0, win=0.6)
    _write_run(tmp_path, "t_learned_seed1", [0.9], messages=1.0, win=0.7)
    _write_run(tmp_path, "t_dense_seed0", [0.9], messages=6.0, win=0.9)
    drawn = {
        "t_learned_seed0": (0.8, 0.85, 1.5),
        "t_learned_seed1": (0.9, 0.95, 2.5),
        "t_dense_seed0": (None, 0.9, 6.0),
    }
    for stem, (gates, sampled, msgs) in drawn.items():
        path = tmp_path / f"{stem}_greedy.json"
        greedy = json.loads(path.read_text())
        greedy[comm.SAMPLED] = {"win_rate": sampled, "messages_per_step": msgs, "gate_open_rate": 0.5}
        if gates is not None:
            greedy[comm.SAMPLED_GATES] = {"win_rate": gates, "messages_per_step": msgs, "gate_open_rate": 0.5}
        path.write_text(json.dumps(greedy))
    lines = comm.summarize(["t"], tmp_path).splitlines()
    assert any(line.startswith("| arm | seeds | greedy success | greedy actions, gates drawn |") for line in lines)
    assert "| learned | 2 | 0.65 | 0.85 | 0.90 | 2.00 |" in lines  # the means by hand
    assert "| dense | 1 | 0.90 | - | 0.90 | 6.00 |" in lines  # no gates to draw


def test_the_sweep_plans_one_tune_trial_per_seed_of_each_arm_and_writes_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`communication sweep` hands agents/sweep.py every seed of an arm as one trial, with the task's and the arm's
    settings, then writes the files of each trial that has no greedy result (Tune's training is recorded, not run)."""
    import agents.sweep

    ran: list[list[agents.sweep.Trial]] = []
    written: list[str] = []
    monkeypatch.setattr(agents.sweep, "run", lambda trials: ran.append(list(trials)))
    monkeypatch.setattr(comm, "write_trial", lambda config, run_dir, stem, *a: written.append(stem))
    out = tmp_path / "out"
    out.mkdir()
    (out / "capture_3x3_no_comm_seed1_greedy.json").write_text("{}")  # an earlier sweep's
    comm.sweep("capture_3x3", ["learned", "no_comm"], [0, 1], 2000, 5, out, tmp_path / "runs")
    assert [len(trials) for trials in ran] == [2, 2]
    for arm, trials in zip(["learned", "no_comm"], ran, strict=True):
        assert {t.seed for t in trials} == {0, 1}
        for trial in trials:
            config = trial.config
            assert config.env.options.dim == 3 and config.env.options.n_capture == 1  # the task's overrides
            assert config.model.communicate == (arm == "learned")  # the arm's
            assert config.stop.env_steps == 2000
            assert trial.run_dir.parent == (tmp_path / "runs" / f"communication-capture_3x3-{arm}").resolve()
    assert sorted(written) == ["capture_3x3_learned_seed0", "capture_3x3_learned_seed1", "capture_3x3_no_comm_seed0"]


def test_a_probe_sweeps_its_arms_with_its_overrides_under_its_own_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agents.sweep

    ran: list[list[agents.sweep.Trial]] = []
    written: list[str] = []
    monkeypatch.setattr(agents.sweep, "run", lambda trials: ran.append(list(trials)))
    monkeypatch.setattr(comm, "write_trial", lambda config, run_dir, stem, *a: written.append(stem))
    extra = ["training.graph_freeze_fraction=0.25"]
    comm.sweep("capture_3x3", ["learned_nogates"], [0], 2000, 5, tmp_path / "out", tmp_path / "runs", "freeze25", extra)
    (trial,) = ran[0]
    assert trial.config.training.graph_freeze_fraction == 0.25  # the probe's change
    assert not trial.config.model.gates.enabled  # and the arm's
    assert trial.run_dir.parent.name == "communication-capture_3x3-learned_nogates-freeze25"
    assert written == ["capture_3x3_learned_nogates-freeze25_seed0"]


def test_the_sweep_lets_an_arm_change_a_key_the_task_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.sweep

    ran: list[list[agents.sweep.Trial]] = []
    monkeypatch.setattr(agents.sweep, "run", lambda trials: ran.append(list(trials)))
    monkeypatch.setattr(comm, "write_trial", lambda *a: None)
    comm.sweep("capture_2p2c_4x4", ["dense", "random"], [0], 2000, 5, tmp_path / "out", tmp_path / "runs")
    dense, random = (trials[0].config.model.graph for trials in ran)
    assert dense.k is None and dense.senders(4) == 3  # the arm's k = null over the task's k = 1
    assert random.k == 1 and random.init == "random"
    assert comm._last_wins(["a=1", "b=2", "a=3"]) == ["a=3", "b=2"]


def test_the_summary_finds_probes_and_costs_after_the_arms_and_not_a_longer_tasks_runs(tmp_path: Path) -> None:
    _write_run(tmp_path, "t_learned-freeze25_seed0", [0.5, 0.9], messages=1.0, win=0.95)
    _write_run(tmp_path, "t_cost0.3_seed0", [0.1, 0.2], messages=0.0, win=0.2)
    _write_run(tmp_path, "t_cost0.03_seed0", [0.1, 0.2], messages=0.5, win=0.6)
    _write_run(tmp_path, "t_dense_seed0", [0.3, 0.9], messages=6.0, win=0.99)
    _write_run(tmp_path, "t_learned_seed0", [0.4, 0.8], messages=1.5, win=0.9)
    _write_run(tmp_path, "t_vision0_learned_seed0", [0.4, 0.8], messages=1.5, win=0.9)  # task "t_vision0"
    _write_run(tmp_path, "t_notes_seed0", [0.4, 0.8], messages=1.5, win=0.9)  # not an arm
    assert comm.task_arms("t", tmp_path) == ["learned", "dense", "cost0.03", "cost0.3", "learned-freeze25"]
    rows = [line.split(" | ")[0] for line in comm.summarize(["t"], tmp_path).splitlines() if line.startswith("| ")]
    assert rows[1:6] == ["| learned", "| dense", "| cost0.03", "| cost0.3", "| learned-freeze25"]


def test_a_probe_needs_a_tag_and_overrides_together_and_a_clean_tag() -> None:
    with pytest.raises(SystemExit):
        comm.main(["sweep", "--task", "capture_3x3", "training.lr=0.1"])  # overrides without a tag
    with pytest.raises(SystemExit):
        comm.main(["sweep", "--task", "capture_3x3", "--tag", "fast"])  # a tag without overrides
    with pytest.raises(SystemExit, match="without '-'"):
        comm.main(["sweep", "--task", "capture_3x3", "--tag", "a-b", "training.lr=0.1"])
    with pytest.raises(SystemExit, match="without '-'"):
        comm.arm_name("learned", "a_b")
    with pytest.raises(SystemExit, match=r"one value each, got a grid in training\.lr=0\.1,0\.2"):
        comm.main(["sweep", "--task", "capture_3x3", "--tag", "lr", "training.lr=0.1,0.2"])


def test_the_summary_lists_each_seeds_final_graph_and_who_reaches_a_seeing_agent(tmp_path: Path) -> None:
    task = "capture_1p3c_4x4"  # agent 0 sees, 1-3 are blind
    _write_run(tmp_path, f"{task}_random_seed0", [0.2], messages=3.0, win=0.2)
    _write_run(tmp_path, f"{task}_learned_seed0", [0.9], messages=3.0, win=0.9)
    _write_run(tmp_path, f"{task}_dense_seed0", [1.0], messages=12.0, win=1.0)
    graphs = {
        "random": [[3], [3], [3], [1]],  # 1 <-> 3 a cycle, 2 follows it: nobody blind reaches 0
        "learned": [[1], [0], [1], [2]],  # 1 hears 0; 2 through 1; 3 through 2, 1
        "dense": [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]],
    }
    for arm, graph in graphs.items():
        path = tmp_path / f"{task}_{arm}_seed0_greedy.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"graph": graph}))
    lines = comm.summarize([task], tmp_path).splitlines()
    assert "| random | 0<-3 1<-3 2<-3 3<-1 (direct 0/3, chain 0/3) |" in lines
    assert "| learned | 0<-1 1<-0 2<-1 3<-2 (direct 1/3, chain 3/3) |" in lines
    assert not any(line.startswith("| dense | 0<-") for line in lines)  # every receiver hears everyone


def test_the_final_graph_is_the_one_the_policy_acts_with() -> None:
    import torch

    from commformer.config import GraphConfig, ModelConfig
    from commformer.policy import CommFormerPolicy

    policy = CommFormerPolicy(ModelConfig(embed_dim=8, graph=GraphConfig(k=1)), 4, 3, 2)
    with torch.no_grad():
        policy.trunk.graph.logits.copy_(torch.eye(4).roll(1, dims=0) * 5)  # row i prefers i - 1 (mod 4)
    assert comm.final_graph(policy) == {"graph": [[3], [0], [1], [2]]}
    silent = CommFormerPolicy(ModelConfig(embed_dim=8, communicate=False), 4, 3, 2)
    assert comm.final_graph(silent) == {}


def test_a_summary_of_some_tasks_leaves_results_md_to_the_summary_of_all(tmp_path: Path) -> None:
    _write_run(tmp_path, "a_learned_seed0", [0.5], messages=1.0, win=0.5)
    _write_run(tmp_path, "b_learned_seed0", [0.7], messages=1.0, win=0.7)
    _write_run(tmp_path, "c_x_dense_seed0", [0.9], messages=2.0, win=0.9)  # a task without a `learned` run
    _write_run(tmp_path, "c_x_learned_nogates-tag_seed1", [0.6], messages=1.0, win=0.6)
    assert comm.measured_tasks(tmp_path) == ["a", "b", "c_x"]
    assert comm.main(["summarize", "--out", str(tmp_path)]) == 0
    both = (tmp_path / "results.md").read_text()
    assert "### a" in both and "### b" in both and "### c_x" in both
    assert comm.main(["summarize", "--out", str(tmp_path), "--task", "b"]) == 0
    assert (tmp_path / "results.md").read_text() == both


@pytest.mark.parametrize("gates", [True, False])
def test_the_evaluation_plays_the_gates_drawn_too_where_the_policy_has_them(tmp_path: Path, gates: bool) -> None:
    import torch

    from agents.play import make_play_env
    from commformer.config import GateConfig, ModelConfig
    from commformer.policy import CommFormerPolicy

    env_config = {"name": "predator_prey", "options": {"vision": 0}, "team_reward": "mean", "use_state": False}
    env = make_play_env(env_config)
    n, obs_dim, n_actions = env.n_agents, env.obs_dim, env.n_actions
    env.close()
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=8, num_heads=2, gates=GateConfig(enabled=gates, init_bias=0.0))
    policy = CommFormerPolicy(config, n, obs_dim, n_actions)
    comm.evaluate(policy, env_config, False, episodes=3, seed=0, out=tmp_path, stem="t_learned_seed0")
    greedy = json.loads((tmp_path / "t_learned_seed0_greedy.json").read_text())
    assert greedy["episodes"] == 3 and "graph" in greedy
    assert set(greedy[comm.SAMPLED]) == {"win_rate", "messages_per_step", "gate_open_rate"}
    if gates:
        drawn = greedy[comm.SAMPLED_GATES]
        assert set(drawn) == {"win_rate", "messages_per_step", "gate_open_rate"}
        assert 0.0 < drawn["gate_open_rate"] < 1.0  # p = 0.5 at init: drawn, not all open or all closed
        assert 0.0 < greedy[comm.SAMPLED]["gate_open_rate"] < 1.0
    else:
        assert comm.SAMPLED_GATES not in greedy
