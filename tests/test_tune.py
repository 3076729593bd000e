"""Hyperparameter search (zipo.tune, `zipo tune`) on the real pbmc_small data, with 2-3 epochs
per trial: the paper's space, the best config as a TOML that `zipo train` reproduces, resuming a
study from SQLite, pruning, and clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

import zipo  # noqa: E402
from zipo.cli import main  # noqa: E402
from zipo.config import load_config  # noqa: E402
from zipo.tools.search_space import ENCODER_SHAPES, PAPER_SEARCH_SPACE  # noqa: E402
from zipo.train.schedule import monitored_column  # noqa: E402

from optuna.trial import TrialState  # noqa: E402

FAST = {"max_epochs": 2, "batch_size": 32}


def kept_score(model) -> float:
    """The tuning score (by default the held-out molecules' NLL) at the epoch whose weights
    the model kept."""
    h = model.history
    return float(h["validation_heldout_nll"].iloc[int(h[monitored_column(h)].to_numpy().argmin())])


def test_paper_space_best_model_and_toml_that_zipo_train_reproduces(pbmc_small, pbmc_small_path,
                                                                     tmp_path, capsys):
    out = tmp_path / "best.toml"
    result = zipo.tune(pbmc_small, n_trials=3, out=out, **FAST)
    model, study = result.model, result.study
    assert len(study.trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    values = [t.value for t in study.trials]
    assert len(set(values)) == 3 and all(np.isfinite(values))
    for t in study.trials:
        assert set(t.params) == {"encoder_dims", "alpha_z", "alpha_w"}
        assert t.params["encoder_dims"] in ENCODER_SHAPES
        assert 0.01 <= t.params["alpha_z"] <= 1 and 0.01 <= t.params["alpha_w"] <= 1
        assert t.user_attrs["epochs"] == 2 and sorted(t.intermediate_values) == [1, 2]
    assert len({t.params["alpha_z"] for t in study.trials}) == 3  # the sampler really samples

    # The returned model is the best trial's, trained, with its options and score.
    best = study.best_trial
    assert study.best_value == min(values)
    assert model.is_trained and len(model.history) == 2
    # trials train one fit; the best then gets the three more that 80 cells get by default
    assert len(model.further_fits) == 3 and model.config.train.n_fits == 0
    assert "-".join(map(str, model.config.model.encoder_dims)) == best.params["encoder_dims"]
    assert model.config.model.alpha_z == best.params["alpha_z"]
    assert model.config.model.alpha_w == best.params["alpha_w"]
    assert kept_score(model) == pytest.approx(best.value, rel=1e-6)
    assert model.config.train.verbose  # trials ran quietly; the user's setting is back
    assert result.best_params == best.params and result.best_value == best.value
    assert result.metric == "validation_heldout_nll"
    assert result.trials()["validation_heldout_nll"].tolist() == values
    with pytest.warns(DeprecationWarning, match=r"use result\.model\.history"):
        assert result.history is model.history  # what tune() returned before: the model

    # The TOML holds the best trial's full config, and `zipo train --config` retrains it to the
    # same score (same seed, hence same weights and validation cells, on CPU).
    cfg = load_config(out)
    assert cfg.to_dict() == model.config.to_dict()
    assert not list(tmp_path.glob(".best.toml.tmp-*"))
    model_dir = tmp_path / "model"
    assert main(["train", str(pbmc_small_path), "--config", str(out), "--out", str(model_dir),
                 "--quiet", "--device", "cpu"]) == 0
    retrained = zipo.ZiPo.load(model_dir)
    assert retrained.config.model.encoder_dims == model.config.model.encoder_dims
    assert len(retrained.further_fits) == 3
    assert kept_score(retrained) == pytest.approx(best.value, rel=1e-4)

    # An existing out is refused before any training, and left untouched.
    before = out.read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        zipo.tune(pbmc_small, n_trials=1, out=out, **FAST)
    assert out.read_bytes() == before


def test_resume_from_sqlite_adds_only_the_missing_trials(pbmc_small, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"encoder_dims": ["64-16", "32-8"], "alpha_z": (0.01, 1.0, "log")}
    first = zipo.tune(pbmc_small, n_trials=2, storage=storage, study_name="s",
                      search_space=space, **FAST).study.trials  # a snapshot
    assert len(first) == 2
    result = zipo.tune(pbmc_small, n_trials=4, storage=storage, study_name="s",
                       search_space=space, **FAST)
    trials = result.study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.params for t in trials[:2]] == [t.params for t in first]
    # A resumed sampler does not replay the first session's random start-up points.
    old = {t.params["alpha_z"] for t in trials[:2]}
    assert not old & {t.params["alpha_z"] for t in trials[2:]}

    # Nothing is missing any more: no trial runs, and if the best one ran in an earlier session
    # it is retrained from its config to the same score.
    again = zipo.tune(pbmc_small, n_trials=3, storage=storage, study_name="s",
                      search_space=space, **FAST)
    assert len(again.study.trials) == 4
    assert again.study.best_trial.number == result.study.best_trial.number
    assert kept_score(again.model) == pytest.approx(again.best_value, rel=1e-4)

    # Trials run with other settings would not be comparable: refused.
    with pytest.raises(ValueError, match="another base config"):
        zipo.tune(pbmc_small, n_trials=5, storage=storage, study_name="s",
                  search_space=space, max_epochs=3, batch_size=32)
    with pytest.raises(ValueError, match="another data"):
        zipo.tune(pbmc_small[:70].copy(), n_trials=5, storage=storage, study_name="s",
                  search_space=space, **FAST)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 4


class PruneTrial1(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report and nothing else."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_pruned_trials_stop_after_the_reported_epoch(pbmc_small):
    space = {"encoder_dims": ["64-16"], "alpha_w": (0.01, 1.0, "log")}
    result = zipo.tune(pbmc_small, n_trials=3, search_space=space, pruner=PruneTrial1(),
                       max_epochs=4, batch_size=32)
    states = [t.state for t in result.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    pruned = result.study.trials[1]
    assert pruned.user_attrs["epochs"] == 1 and list(pruned.intermediate_values) == [1]
    assert result.study.best_trial.number in (0, 2) and len(result.model.history) == 4

    # Pruned trials count towards n_trials; when every trial is pruned there is no best model.
    with pytest.raises(ValueError, match="no trial of study 'zipo' completed .*2 pruned"):
        zipo.tune(pbmc_small, n_trials=2, search_space=space,
                  pruner=optuna.pruners.ThresholdPruner(upper=0.0), max_epochs=3, batch_size=32)


def test_an_optuna_pruner_stops_trials_that_fall_behind(pbmc_small):
    # learning_rate 1e-6 barely moves from the initial model while 1e-2 learns. The 0th-percentile
    # rule prunes a trial worse than every completed one at the same epoch: once a 1e-2 trial has
    # completed, each 1e-6 trial is stopped at epoch 2, the first after the warm-up (steps are
    # epochs, counted from 1).
    space = {"learning_rate": [1e-2, 1e-6], "encoder_dims": ["64-16"]}
    pruner = optuna.pruners.PercentilePruner(0.0, n_startup_trials=1, n_warmup_steps=2)
    # The paper's training, so that "learns" means the whole-count validation NLL drops fast.
    study = zipo.tune(pbmc_small, n_trials=6, search_space=space, pruner=pruner,
                      preset="paper", max_epochs=4, batch_size=32, lr_min=1e-7, seed=1).study
    good = [t.number for t in study.trials if t.params["learning_rate"] == 1e-2]
    slow = [t for t in study.trials if t.params["learning_rate"] == 1e-6]
    assert good and any(t.number > good[0] for t in slow), [t.params for t in study.trials]
    for t in slow:
        if t.number > good[0]:
            assert t.state == TrialState.PRUNED and t.user_attrs["epochs"] == 2
            assert sorted(t.intermediate_values) == [1, 2]
        else:
            assert t.state == TrialState.COMPLETE and t.user_attrs["epochs"] == 4
    assert all(study.trials[n].state == TrialState.COMPLETE for n in good)
    assert study.best_trial.params["learning_rate"] == 1e-2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"search_space": {"alpha_q": (0.1, 1.0)}}, "unknown option 'alpha_q'"),
        ({"search_space": {"alpha_z": (1.0, 0.1)}}, "need low < high"),
        ({"search_space": {"alpha_z": (0.0, 1.0, "log")}}, "low > 0 on a log scale"),
        ({"search_space": {"encoder_dims": ["512-x"]}}, "not a list of widths"),
        ({"search_space": {"likelihood": ["zip", "gauss"]}}, "likelihood must be one of"),
        ({"alpha_z": 0.5}, "alpha_z is searched"),
        ({"storage": "study.db"}, "storage must be a database URL"),
        ({"storage": "sqlite:////no/such/folder/x.db"}, "cannot open the Optuna storage"),
        ({"validation_fraction": 0.0}, "validation_fraction must be > 0"),
        ({"metric": "mse"}, "metric must be one of"),
        ({"metric": "validation_heldout_nll", "heldout_molecules": 0.0},
         "needs train.heldout_molecules > 0"),
        ({"metric": "validation_nll"}, "which the trials train on"),
        ({"n_trials": 0}, "n_trials must be a positive integer"),
        ({"out": "best.json"}, "out must be a .toml file"),
    ],
)
def test_bad_arguments_are_refused_before_training(pbmc_small, kwargs, message, monkeypatch):
    monkeypatch.setattr(zipo.ZiPo, "train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=message):
        zipo.tune(pbmc_small, **{"n_trials": 1, **kwargs})


def test_cli_tune_resumes_prints_the_table_and_writes_the_best_config(pbmc_small_path, tmp_path,
                                                                     capsys):
    db, out = tmp_path / "tune.db", tmp_path / "best.toml"
    args = ["tune", str(pbmc_small_path), "--storage", f"sqlite:///{db}", "--study-name", "cli",
            "--max-epochs", "2", "--set", "batch_size=32", "--seed", "3"]
    assert main([*args, "--trials", "1"]) == 0
    assert main([*args, "--trials", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("trial", "state", "validation_heldout_nll", "epochs", "encoder_dims", "alpha_z",
                 "alpha_w", "COMPLETE", "Best trial", "Best config written to"):
        assert word in text, word
    study = optuna.load_study(study_name="cli", storage=f"sqlite:///{db}")
    assert len(study.trials) == 2
    cfg = load_config(out)
    assert cfg.model.alpha_z == study.best_params["alpha_z"]
    assert cfg.train.batch_size == 32 and cfg.train.max_epochs == 2 and cfg.train.seed == 3

    for extra, message in [
        (["--trials", "2", "--out", str(out)], "already exists"),
        (["--trials", "2", "--set", "alpha_z=0.5"], "what zipo tune searches"),
        (["--trials", "2", "--storage", "nonsense"], "storage must be a database URL"),
    ]:
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err, message


def test_cli_without_optuna_says_how_to_install_it(pbmc_small_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    assert main(["tune", str(pbmc_small_path), "--trials", "1"]) == 2
    assert "pip install 'zipo[tune]'" in capsys.readouterr().err
    with pytest.raises(ImportError, match=r"pip install 'zipo\[tune\]'"):
        zipo.tune(None)


def test_paper_space_is_the_papers():
    assert ENCODER_SHAPES == ("2048-1024-512-256-128", "1024-512-256-128",
                              "1024-512-256-128-64", "512-256-128", "512-256-128-64")
    assert PAPER_SEARCH_SPACE["alpha_z"] == PAPER_SEARCH_SPACE["alpha_w"] == (0.01, 1.0, "log")
