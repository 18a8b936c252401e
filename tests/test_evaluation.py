"""Batched evaluation: equal to one env at a time, resumable, one consistent table."""

from __future__ import annotations

import json

import pytest

from conftest import CARTPOLE, minari_at, rollout_actions, run_cli
from dtcond.families import load_policy
from dtcond.common.errors import DtcondError
from dtcond.rollout.evaluation import evaluate, make_jobs
from dtcond.rollout.records import ResultsStore
from dtcond.dt.training import train

TINY = dict(context_len=4, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False)
SPECS = ["q0.1", "q0.9", "x1.5", "quantilizer:0.25"]


@pytest.fixture(scope="module")
def cartpole_bundle(module_root):
    """One tiny CartPole model for the module's tests: they read it and never change it."""
    with minari_at(module_root / "minari"):
        return train(CARTPOLE, module_root / "cp", model=TINY, data=dict(batch_size=16, steps_per_epoch=20, val_windows=32),
                     trainer=dict(max_steps=40, **QUIET)).bundle


@pytest.fixture
def cartpole_policy(cartpole_bundle, cartpole_dataset):
    # A fresh policy per test (it carries decoding state); the dataset sits in the test's own root for the CLI.
    return load_policy(cartpole_bundle)


@pytest.fixture
def pendulum_policy(pendulum_dataset, tmp_path):
    r = train(pendulum_dataset, tmp_path / "pd", model=TINY, data=dict(batch_size=16, steps_per_epoch=20, val_windows=32),
              trainer=dict(max_steps=20, **QUIET))
    return load_policy(r.bundle)


def one_at_a_time(policy, specs, episodes, seed, max_steps=None):
    """The reference: the single-env API, one episode after another, with the evaluator's seeds."""
    out = []
    for job in make_jobs(specs, episodes, seed):
        env = policy.make_env(**({"max_episode_steps": max_steps} if max_steps else {}))
        target = job.spec.resolve(policy.stats, job.target_rng())
        obs, _ = env.reset(seed=job.env_seed)
        policy.reset(target.value, seed=job.sampling_rng())
        total, length, reward = 0.0, 0, None
        while True:
            obs, reward, term, trunc, _ = env.step(policy.act(obs, reward))
            total += reward
            length += 1
            if term or trunc:
                break
        out.append((str(job.spec), job.episode, total, length))
    return out


def summary(records):
    return [(r["target_spec"], r["episode"], r["episode_return"], r["length"]) for r in records]


def test_batched_equals_one_env_at_a_time_discrete(cartpole_policy):
    batched = summary(evaluate(cartpole_policy, SPECS, episodes=3, seed=7))
    assert batched == one_at_a_time(cartpole_policy, SPECS, 3, 7)
    assert len({r[3] for r in batched}) > 1  # episodes of different lengths shared the batch


def test_batched_equals_one_env_at_a_time_continuous(pendulum_policy):
    batched = summary(evaluate(pendulum_policy, SPECS, episodes=2, seed=3, env_kwargs={"max_episode_steps": 60}))
    single = one_at_a_time(pendulum_policy, SPECS, 2, 3, max_steps=60)
    for (s1, e1, r1, l1), (s2, e2, r2, l2) in zip(batched, single):
        assert (s1, e1, l1) == (s2, e2, l2) and r1 == pytest.approx(r2, rel=1e-4)


def test_results_do_not_depend_on_batch_size(cartpole_policy):
    big = evaluate(cartpole_policy, SPECS, episodes=3, seed=1)
    small = evaluate(cartpole_policy, SPECS, episodes=3, seed=1, batch_size=5)
    assert summary(big) == summary(small)


def test_records_carry_the_target_and_its_data_quantile(cartpole_policy):
    recs = evaluate(cartpole_policy, ["q0.5", "x1.5"], episodes=2, seed=0)
    stats = cartpole_policy.stats
    assert recs[0]["target"] == pytest.approx(stats.return_quantile(0.5)) and not recs[0]["ood"]
    assert recs[0]["target_quantile"] == pytest.approx(stats.tail_probability(recs[0]["target"]))
    assert recs[-1]["ood"] and recs[-1]["target_quantile"] == 0.0 and recs[-1]["target"] == 750.0
    assert recs[0]["env_id"] == "CartPole-v1" and recs[0]["policy_kind"] == "dt" and recs[0]["cost"] is None
    assert {(r["policy_kind"], r["train_step"]) for r in recs} == {("dt", 40)}  # typed columns: no label to parse


def test_an_interrupted_sweep_resumes_without_repeating_episodes(cartpole_policy, tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    real_append = ResultsStore.append
    calls = {"n": 0}

    def append_then_die(self, records):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_append(self, records)

    monkeypatch.setattr(ResultsStore, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cartpole_policy, SPECS, episodes=3, seed=0, results=path)
    monkeypatch.setattr(ResultsStore, "append", real_append)
    assert len(ResultsStore(path).read()) == 4
    with open(path, "a") as f:
        f.write('{"key": "torn-by-a-crash", "episode_ret')  # a crash mid-append leaves a torn last line
    full = evaluate(cartpole_policy, SPECS, episodes=3, seed=0, results=path)
    rows = ResultsStore(path).read()
    assert len(rows) == len(full) == 12
    assert len({r["key"] for r in rows}) == 12
    assert all(json.loads(line) for line in path.read_text().splitlines())  # no torn line left
    again = evaluate(cartpole_policy, SPECS, episodes=3, seed=0, results=path)
    assert len(ResultsStore(path).read()) == 12 and summary(again) == summary(full)


def test_two_stores_on_one_table_never_write_a_key_twice(tmp_path):
    """Each store parses only what was appended since it last looked, so it must still see the other's lines,
    and read from scratch a table that was cut short or replaced."""
    path = tmp_path / "t.jsonl"
    a, b = ResultsStore(path), ResultsStore(path)
    assert a.append([{"key": "k1"}, {"key": "k2"}]) == 2
    assert b.append([{"key": "k2"}, {"key": "k3"}]) == 1
    assert a.append([{"key": "k3"}, {"key": "k4"}]) == 1  # k3 came from b after a's last look
    with open(path, "a") as f:
        f.write('{"key": "k5"}\n{"key": "torn')  # another writer's line, then a crash mid-line
    assert b.append([{"key": "k5"}, {"key": "k6"}]) == 1
    assert [r["key"] for r in ResultsStore(path).read()] == ["k1", "k2", "k3", "k4", "k5", "k6"]
    path.unlink()
    path.write_text('{"key": "k9"}\n')  # the table replaced by another file
    assert a.append([{"key": "k1"}, {"key": "k9"}]) == 1
    assert [r["key"] for r in ResultsStore(path).read()] == ["k9", "k1"]


def test_bad_evaluation_input(cartpole_policy):
    with pytest.raises(DtcondError, match="episodes must be >= 1"):
        evaluate(cartpole_policy, ["q0.5"], episodes=0)
    with pytest.raises(DtcondError, match="no targets"):
        evaluate(cartpole_policy, [], episodes=1)
    with pytest.raises(DtcondError, match="do not match the policy"):
        evaluate(cartpole_policy, ["q0.5"], episodes=1, env_id="Pendulum-v1")
    with pytest.raises(DtcondError, match="cannot make env"):
        evaluate(cartpole_policy, ["q0.5"], episodes=1, env_id="NoSuchEnv-v0")


def test_cli_eval_grid_report_and_bad_targets(cartpole_policy, tmp_path):
    results = tmp_path / "results.jsonl"
    base = ("eval", f"policy={cartpole_policy.source}", f"results={results}", "episodes=2", "progress=false")
    out = run_cli(*base, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [r for r in ResultsStore(results).read() if r["policy_kind"] == "dt"]
    assert len(rows) == (7 + 3) * 2 and sum(r["ood"] for r in rows) == 3 * 2
    assert all(r["cross_entropy_behavior"] > 0 and r["kl_behavior"] >= 0 for r in rows)
    assert sum(r["policy_kind"] == "data" for r in ResultsStore(results).read()) == 20
    md = (tmp_path / "calibration.md").read_text()
    assert (tmp_path / "calibration.png").stat().st_size > 10_000 and "| MAE | bias |" in md and "OOD gain" in md
    metrics = next(iter(json.loads((tmp_path / "calibration.json").read_text()).values()))
    ind = metrics["in_distribution"]
    assert ind["episodes"] == 7 * 2 and ind["mae"] >= abs(ind["bias"]) and metrics["ood_gain_pairs"] == 2
    before = results.read_bytes()
    for bad, message in [("sampler.target=qnan", "value must be finite, got nan"), ("sampler.target=q1.5", "quantile must be in"),
                         ("episodes=0", "episodes must be >= 1")]:
        out = run_cli(*base, bad, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert results.read_bytes() == before  # nothing written is lost or changed
    out = run_cli("eval", f"policy={tmp_path}/nothing", f"results={results}", cwd=tmp_path)
    assert out.returncode == 2 and "no policy at" in out.stderr


@pytest.mark.slow  # a subprocess or several processes: the end-to-end tier
def test_multirun_with_joblib_writes_one_consistent_table(cartpole_policy, tmp_path):
    results = tmp_path / "results.jsonl"
    out = run_cli("eval", "-m", f"policy={cartpole_policy.source}", f"results={results}", "episodes=3", "progress=false",
                  "report=false", "roaming=false", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/multi",
                  "sampler.target=q0.2,q0.5,q0.8,x1.5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = ResultsStore(results).read()
    assert len(rows) == 12 and len({r["key"] for r in rows}) == 12
    assert sorted({r["target_spec"] for r in rows}) == ["q0.2", "q0.5", "q0.8", "x1.5"]


def test_window_decoding_equals_cached_decoding_for_one_layer(cartpole_dataset, tmp_path):
    # With one layer a token's keys depend on its own embedding only, so recomputing the last K
    # steps and reading them from the banded cache are the same computation.
    r = train(cartpole_dataset, tmp_path / "one", model={**TINY, "n_layer": 1},
              data=dict(batch_size=16, steps_per_epoch=20, val_windows=32),
              trainer=dict(max_steps=30, **QUIET))
    policy = load_policy(r.bundle)
    cached = evaluate(policy, SPECS, episodes=2, seed=5)
    policy.decode = "window"
    window = evaluate(policy, SPECS, episodes=2, seed=5)
    assert summary(cached) == summary(window)
    assert window[0]["fingerprint"] == cached[0]["fingerprint"] + "-window"


def _first_actions(policy, target):
    actions = rollout_actions(policy, seed=0, steps=20, target=target, env_seed=5)
    return actions, policy._episode["rtg"] + 0.0


def test_reset_takes_what_evaluate_takes(cartpole_policy):
    from dtcond import targets

    value = targets.quantile(0.9).resolve(cartpole_policy.stats).value
    by_value = _first_actions(cartpole_policy, value)
    assert _first_actions(cartpole_policy, "q0.9") == by_value
    assert _first_actions(cartpole_policy, targets.quantile(0.9)) == by_value
    assert _first_actions(cartpole_policy, " Q0.9 ") == by_value


def test_reset_on_a_quantilizer_draws_from_the_top_tail_by_its_seed(pendulum_policy):
    from dtcond import targets

    support = set(targets.quantilizer(0.25).support(pendulum_policy.stats).tolist())
    draws = []
    for seed in range(8):
        pendulum_policy.reset(target="quantilizer:0.25", seed=seed)
        draws.append(pendulum_policy._episode["rtg"])
    assert set(draws) <= support and len(set(draws)) > 1
    pendulum_policy.reset(target="quantilizer:0.25", seed=3)
    assert pendulum_policy._episode["rtg"] == draws[3]


@pytest.mark.parametrize("bad, message", [([300.0], "got list"), (None, "got NoneType"), (True, "got bool"),
                                          ("q1.5", "quantile must be in"), ("none", "unconditioned"),
                                          ("banana", "cannot parse target"), (float("inf"), "finite")])
def test_reset_refuses_a_bad_target_in_one_line(cartpole_policy, bad, message):
    with pytest.raises(DtcondError, match=message) as err:
        cartpole_policy.reset(target=bad)
    assert "\n" not in str(err.value)


def test_an_episode_record_with_a_column_the_schema_does_not_know_is_refused_not_a_nan_column(tmp_path):
    from dtcond.rollout.records import COLUMNS, ResultsStore, episode_record

    good = episode_record("k1", "dt", "dt", "abc", episode_return=1.0, trajectory_kl=0.5)
    assert set(good) <= set(COLUMNS)
    with pytest.raises(DtcondError, match="columns the schema does not know: episode_retrun"):
        episode_record("k2", "dt", "dt", "abc", episode_retrun=1.0)
    store = ResultsStore(tmp_path / "r.jsonl")
    with pytest.raises(DtcondError, match="trajectory_kll"):
        store.append([good, {**good, "key": "k3", "trajectory_kll": 2.0}])
    assert store.read() == []  # refused before anything was written
    assert store.append([good]) == 1
