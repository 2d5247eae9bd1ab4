"""Metric sinks: Weights & Biases (a fake module stands in: wandb is not a dependency) and `jaxspo plot`."""

import json
import sys
import types

import pytest

from jaxspo.train.metrics_log import MetricsLog, read_metrics


class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, data):
        self.logged.append(data)

    def finish(self):
        self.finished = True


def fake_wandb(monkeypatch):
    runs = []
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_mirrors_every_logged_row(tmp_path, monkeypatch):
    runs = fake_wandb(monkeypatch)
    log = MetricsLog(tmp_path, tensorboard=False, wandb_project="proj", config={"loss": {"beta": 0.1}})
    log.log("sft", 10, {"loss": 2.5})
    log.log("preference", 10, {"loss": 0.6, "rewards/accuracies": 0.75})
    log.close()
    (run,) = runs
    assert (
        run.init["project"] == "proj"
        and run.init["name"] == tmp_path.name
        and run.init["config"] == {"loss": {"beta": 0.1}}
    )
    assert run.init["resume"] == "allow" and len(run.init["id"]) == 16
    assert run.logged == [
        {"sft/loss": 2.5, "sft/step": 10},
        {"preference/loss": 0.6, "preference/rewards/accuracies": 0.75, "preference/step": 10},
    ]
    assert run.finished
    assert [r["phase"] for r in read_metrics(tmp_path / "metrics.jsonl")] == ["sft", "preference"]  # JSONL always
    MetricsLog(tmp_path, tensorboard=False, wandb_project="proj").close()
    assert runs[1].init["id"] == run.init["id"]  # the same run directory resumes the same W&B run


def test_wandb_enabled_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="logging.wandb is true but the wandb package is not installed"):
        MetricsLog(tmp_path, tensorboard=False, wandb_project="proj")


def test_plot_command_draws_the_curves(tmp_path, capsys):
    from matplotlib.image import imread

    from jaxspo.cli import main

    rows = [
        {
            "phase": "preference",
            "step": s,
            "loss": 0.7 - 0.01 * s,
            "rewards/chosen": 0.01 * s,
            "rewards/rejected": -0.01 * s,
            "rewards/accuracies": 0.5 + 0.01 * s,
            "perf/tokens_per_second": 1000.0,
        }
        for s in range(1, 11)
    ]
    rows.append({"phase": "eval", "step": 10, "eval/kl": 1.5, "eval/rewards/accuracies": 0.7})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    height, width, _ = imread(tmp_path / "c.png").shape
    assert width == 3 * 450 and height == 3 * 320  # 7 panels: 3 columns × 3 rows at 100 dpi
    assert main(["plot", str(tmp_path / "nothing")]) == 1
    assert "metrics.jsonl: does not exist" in capsys.readouterr().err
