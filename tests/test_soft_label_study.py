"""benchmarks/soft_label_study.py: the data fact it relies on, its grid, its statistics, and one tiny end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import soft_label_study as study  # noqa: E402
from soft_label_report import markdown_tables, share_table  # noqa: E402

from jaxspo.data import build_synthetic_task  # noqa: E402
from jaxspo.data.synthetic_config import SyntheticTaskConfig  # noqa: E402


def _task(temperature: float):
    return build_synthetic_task(
        SyntheticTaskConfig(label_temperature=temperature, hard_label="argmax", num_sft=0, num_train=64, num_eval=16)
    )


def test_argmax_pairs_do_not_depend_on_the_label_temperature():
    """Why one hard-label run per seed stands for every T: the oriented pairs are the same, only p̂ differs."""
    cold, warm = _task(0.1), _task(1.0)
    for split in ("train", "eval"):
        pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in cold.splits[split]]
        assert pairs == [(r["prompt"], r["chosen"], r["rejected"]) for r in warm.splits[split]]
    cold_labels = [r["soft_label"] for r in cold.splits["train"]]
    warm_labels = [r["soft_label"] for r in warm.splits["train"]]
    assert all(w <= c for c, w in zip(cold_labels, warm_labels))
    assert sum(warm_labels) < sum(cold_labels)


def test_cells_run_hard_label_losses_once_and_soft_ones_per_temperature():
    grid = study.cells(["dpo", "gdpo", "cdpo_soft"], [0.1, 1.0])
    assert grid == [("dpo", None), ("gdpo", 0.1), ("cdpo_soft", 0.1), ("gdpo", 1.0), ("cdpo_soft", 1.0)]


def test_a_soft_label_loss_without_its_baseline_is_refused(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--methods", "gdpo", "gipo", "dpo"])
    assert "['ipo']" in capsys.readouterr().err


def test_label_shares_move_towards_ties_as_the_temperature_grows():
    """Ties (equal rewards) stay p̂ = ½ at every T; every other label falls towards ½, and at T = 1 no label reaches
    σ(1) ≈ 0.73 because rewards lie in [0, 1]."""
    small = ["data.synthetic.num_train=64", "data.synthetic.num_sft=0", "data.synthetic.num_eval=16"]
    cold, warm = (study.label_shares(temperature, [0, 1], small) for temperature in (0.1, 1.0))
    assert cold["pairs"] == warm["pairs"] == 128
    assert 0.0 < cold["tie"] == warm["tie"] < 1.0
    assert 0.5 < warm["mean"] < cold["mean"] < 1.0
    assert cold["below_0.6"] <= warm["below_0.6"] <= warm["below_0.75"] == 1.0
    table = share_table({"label_shares": {"0.1": cold, "1": warm}})
    assert (
        f"| 1 | {warm['mean']:.3f} | {100 * warm['tie']:.1f} % | {100 * warm['below_0.6']:.1f} % | 100.0 % |" in table
    )


def _write(out: Path, name: str, correctness: float) -> None:
    (out / name).mkdir(parents=True)
    after = {key: 0.0 for key in study.METRICS} | {"eval/gold/correctness": correctness}
    before = {"eval/gold/correctness": 0.25, "eval/logps_accuracy": 0.5}
    (out / name / "result.json").write_text(json.dumps({"before": before, "after": after, "seconds": 1.0}))


def test_summary_pairs_each_seed_with_its_baseline(tmp_path):
    """Edges are soft − hard per seed; the growth is the high-T edge minus the low-T edge, seed by seed."""
    dpo = {0: 0.40, 1: 0.50, 2: 0.45}
    gdpo = {0.1: {0: 0.42, 1: 0.53, 2: 0.46}, 1.0: {0: 0.30, 1: 0.41, 2: 0.36}}
    for seed, value in dpo.items():
        _write(tmp_path, f"dpo-s{seed}", value)
        for temperature, values in gdpo.items():
            _write(tmp_path, f"gdpo-T{temperature:g}-s{seed}", values[seed])
    args = study.parse_args(["--seeds", "0", "1", "2", "--temperatures", "0.1", "1", "--methods", "dpo", "gdpo"])
    report = study.summarise(args, tmp_path)
    edge = report["by_temperature"]["0.1"]["edge"]["gdpo"]["eval/gold/correctness"]
    assert edge["per_seed"] == pytest.approx([0.02, 0.03, 0.01])
    assert edge["mean"] == pytest.approx(0.02)
    assert 0.0 < edge["p_value"] < 0.1
    dpo_row = report["by_temperature"]["1"]["methods"]["dpo"]["eval/gold/correctness"]
    assert dpo_row["per_seed"] == [0.40, 0.50, 0.45]
    growth = report["edge_growth"]["gdpo"]
    assert growth["per_seed"] == pytest.approx([-0.12, -0.12, -0.10])
    assert growth["ci95"] > 0.0
    assert report["reference"]["eval/gold/correctness"]["per_seed"] == [0.25, 0.25, 0.25]
    table = markdown_tables(report)
    assert "| 0.1 | `gdpo` | 0.470 ± " in table
    assert f"| 0.020 ± {edge['ci95']:.3f} (3) | {edge['p_value']:.2f} | 0.00 ± 0.00 (3) |" in table
    assert "| `gdpo` | -0.113 ± " in table


def test_summary_of_a_partial_grid_counts_only_finished_runs(tmp_path):
    _write(tmp_path, "dpo-s0", 0.4)
    _write(tmp_path, "gdpo-T0.1-s0", 0.5)
    args = study.parse_args(["--seeds", "0", "1", "--temperatures", "0.1", "--methods", "dpo", "gdpo"])
    report = study.summarise(args, tmp_path)
    edge = report["by_temperature"]["0.1"]["edge"]["gdpo"]["eval/gold/correctness"]
    assert (edge["n"], edge["p_value"], edge["ci95"]) == (1, None, 0.0)


@pytest.mark.slow  # trains an SFT and two 2-step preference runs of a tiny model, and draws the figure (~40 CPU-s)
def test_smallest_grid_runs_end_to_end(tmp_path):
    tiny = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "trainer.sft_steps=2"]
    # a small synthetic task (the default builds and encodes 4,096 + 4,096 rows in each of the three runs)
    tiny += ["data.synthetic.num_sft=256", "data.synthetic.num_train=128", "data.synthetic.num_eval=32"]
    argv = ["--seeds", "0", "--temperatures", "0.5", "--methods", "dpo", "gdpo", "--steps", "2"]
    argv += ["--batch-size", "4", "--eval-pairs", "8", "--eval-prompts", "4", "--out", str(tmp_path)]
    argv += ["--plot", str(tmp_path / "study.png"), *tiny]
    study.main(argv)
    report = json.loads((tmp_path / "summary.json").read_text())
    cell = report["by_temperature"]["0.5"]
    assert cell["methods"]["dpo"]["eval/kl"]["n"] == 1
    assert 0.0 <= cell["methods"]["gdpo"]["eval/gold/correctness"]["mean"] <= 1.0
    assert cell["edge"]["gdpo"]["eval/gold/correctness"]["n"] == 1
    assert (tmp_path / "study.png").stat().st_size > 0
    assert report["label_shares"]["0.5"]["pairs"] == 128  # data.synthetic.num_train above
