"""The family registry: every table, plot and comparison reads it, and a new regularized family is one class plus one
registration."""

from __future__ import annotations

import pytest

from dtcond import families
from dtcond.common.errors import DtcondError
from dtcond.families import Family
from dtcond.rl.penalties import Penalty


class StepCost(Penalty):
    """A throwaway regularized family: a constant cost per step (its parameter), nothing else."""

    kind, param_key = "ppo_step", "step_cost"

    def __init__(self, step_cost: float):
        super().__init__()
        self.step_cost = float(step_cost)

    @classmethod
    def build(cls, param, run):
        return cls(param)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        buf.rewards -= self.step_cost
        buf.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])


STEP = Family("ppo_step", "PPO-step", "regularized", ("-*", "olive"), order=6, symbol="c", frontier="ppo_step", penalty=StepCost)


@pytest.fixture
def step_family():
    families.register(STEP)
    yield STEP
    families.unregister(STEP.kind)


def test_every_regularized_family_has_a_style_of_its_own_and_none_of_the_offline_ones():
    regularized = families.families("regularized")
    assert {f.kind for f in regularized} >= {"ppo_kl", "ppo_kl_bc", "ppo_om", "ppo_lag"}
    colours = [f.style[1] for f in regularized]
    others = {f.style[1] for f in families.families() if f.role in ("data", "conditioned")} | {c for _, c in families.ORACLE_STYLES.values()}
    assert len(set(colours)) == len(colours) and not set(colours) & others
    assert all(f.symbol and f.frontier == f.kind for f in regularized)


def test_the_registry_refuses_a_family_it_cannot_show_or_train():
    with pytest.raises(DtcondError, match="already registered"):
        families.register(Family("ppo_kl", "again", "regularized", ("-1", "gold"), penalty=families.get("ppo_kl").penalty))
    with pytest.raises(DtcondError, match="already another family's"):
        families.register(Family("ppo_step", "new", "regularized", families.get("ppo_om").style, penalty=StepCost))
    with pytest.raises(DtcondError, match="names its penalty class"):
        Family("ppo_new", "new", "regularized", ("-1", "gold"))
    with pytest.raises(DtcondError, match="is for kind 'ppo_step'"):
        Family("ppo_new", "new", "regularized", ("-1", "gold"), penalty=StepCost)
    with pytest.raises(DtcondError, match="unknown policy family 'nope'; registered: data"):
        families.get("nope")
    assert "nope" not in families.frontier_groups()


@pytest.mark.slow  # trains a DT and three PPO runs through the pipeline
def test_a_new_regularized_family_is_one_class_and_one_registration(step_family, tmp_path, monkeypatch):
    """Registered, the throwaway family trains through the pipeline and appears in the console summary, the frontier
    plot and the budget comparisons, with nothing else edited."""
    import dtcond
    from dtcond.analysis import report
    from dtcond.analysis.frontier import budget_comparisons
    from dtcond.config import ComparisonConfig, merge

    legends = []

    def keep_legends(fig, path, **kw):
        legends.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        import matplotlib.pyplot as plt

        plt.close(fig)
        return path

    monkeypatch.setattr(report, "save_figure", keep_legends)
    mixture = [{"policy": "tomato_gardener", "noise": 0.2, "weight": 0.6}, {"policy": "tomato_gamer", "noise": 0.1, "weight": 0.4}]
    config = merge(ComparisonConfig, {
        "env": {"name": "tomato", "id": "dtcond/TomatoGarden-v0", "behavior": mixture, "collect_episodes": 40},
        "dataset_id": "test/tomato/registry-v0", "work_dir": str(tmp_path / "work"), "seeds": [0],
        "model": {"context_len": 4, "n_layer": 1, "n_head": 1, "n_embd": 16}, "data": {"batch_size": 16},
        "trainer": {"max_steps": 5, "logger": False}, "bc": {"enabled": False},
        "rl": {"algo": "ppo", "budget": 128, "checkpoints": 1, "bc_init_steps": 10,
               "hyperparams": {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 1},
               "regularized": {"ppo_step": [0.5, 2.0]}},
        "targets": ["q0.5"], "eval": {"episodes": 4}, "progress": False})
    result = dtcond.run_comparison(config)

    kinds = set(result.records["policy_kind"])
    assert "ppo_step" in kinds
    steps = result.records[result.records["policy_kind"] == "ppo_step"]
    assert sorted(set(steps["policy_param"])) == [0.5, 2.0]
    summary = result.summary()
    assert "PPO-step: ppo_step:" in summary  # the summary's "highest true return" line names the family
    assert "PPO-step (final), by c" in legends  # its series on the frontier plot, in its own style
    [entry] = budget_comparisons(result.records, [None], against=("ppo_step",))  # no budget: each family's best member
    assert entry["families"] == ["conditioning", "ppo_step"] and entry["other"]["reached"] == 1
    assert entry["other"]["mixtures"][0].split(" ")[0] in ("0.5", "2.0")  # a member of the family, by its parameter
