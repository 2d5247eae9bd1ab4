"""benchmarks/selfsup_compare.py: its method grid, the shared reference and the paired statistics (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import selfsup_compare as compare  # noqa: E402


def test_each_base_runs_without_selfsup_then_once_per_key_scoring():
    grid = compare.methods(["dpo"], ["tfidf", "rake"])
    assert list(grid) == ["dpo", "selfsup+dpo", "selfsup+dpo-rake"]
    assert grid["dpo"][1] == ["loss.selfsup.weight=0"]
    assert grid["selfsup+dpo-rake"][1] == ["loss.selfsup.key_scoring=rake"]


def test_a_reference_seed_trains_one_sft_and_every_seed_starts_from_it(tmp_path, monkeypatch):
    calls = []

    def fake_run(recipe, overrides, name):
        calls.append((name, overrides))
        exported = [o.split("=", 1)[1] for o in overrides if o.startswith("checkpoint.export_hf_dir=")]
        for folder in exported:  # what a real SFT run leaves behind
            Path(folder).mkdir(parents=True)
            (Path(folder) / "config.json").write_text("{}")
        return {"seconds": 0.0}

    monkeypatch.setattr(compare, "run", fake_run)
    args = compare.parse_args(["--seeds", "0", "1", "2", "--bases", "dpo", "--key-scorings", "rake", "--out", "x"])
    args.reference_seed = 1
    compare.run_grid(args, tmp_path)
    sft = [overrides for name, overrides in calls if name == "sft"]
    assert len(sft) == 1 and "trainer.seed=1" in sft[0]
    preference = [(name, overrides) for name, overrides in calls if name != "sft"]
    assert [name for name, _ in preference] == ["dpo", "selfsup+dpo-rake"] * 3
    for index, (name, overrides) in enumerate(preference):
        seed = index // 2
        assert f"model.path={tmp_path / 'sft-s1'}" in overrides
        assert {f"trainer.seed={seed}", f"data.synthetic.seed={seed}"} <= set(overrides)
        assert f"run_dir={tmp_path / f'{name}-s{seed}'}" in overrides


def _write(out: Path, name: str, seed: int, correctness: float) -> None:
    (out / f"{name}-s{seed}").mkdir(parents=True)
    after = {key: 0.5 for key in compare.METRICS} | {"eval/gold/correctness": correctness}
    before = {key: 0.25 for key in compare.METRICS}
    result = {"before": before, "after": after, "seconds": 1.0}
    (out / f"{name}-s{seed}" / "result.json").write_text(json.dumps(result))


def test_summary_pairs_each_selfsup_run_with_its_base_on_the_same_seed(tmp_path):
    """Differences are selfsup − base seed by seed; a seed the base lacks is left out of the pairs."""
    values = {
        "dpo": {0: 0.40, 1: 0.50, 2: 0.45},
        "selfsup+dpo": {0: 0.42, 1: 0.53, 2: 0.46, 3: 0.9},
        "selfsup+dpo-rake": {0: 0.40, 1: 0.48, 2: 0.47},
    }
    for name, by_seed in values.items():
        for seed, value in by_seed.items():
            _write(tmp_path, name, seed, value)
    args = compare.parse_args(["--seeds", "0", "1", "2", "3", "--bases", "dpo", "--key-scorings", "tfidf", "rake"])
    report = compare.summarise(args, tmp_path)
    tfidf = report["vs_base"]["selfsup+dpo"]["eval/gold/correctness"]
    assert tfidf["seeds"] == [0, 1, 2]
    assert tfidf["per_seed"] == pytest.approx([0.02, 0.03, 0.01])
    assert tfidf["mean"] == pytest.approx(0.02)
    assert 0.0 < tfidf["p_value"] < 0.1 and tfidf["ci95"] > 0.0
    rake = report["vs_base"]["selfsup+dpo-rake"]["eval/gold/correctness"]
    assert rake["mean"] == pytest.approx(0.0, abs=1e-12) and rake["p_value"] > 0.9
    rake_vs_tfidf = report["vs_tfidf"]["selfsup+dpo-rake"]["eval/gold/correctness"]
    assert rake_vs_tfidf["per_seed"] == pytest.approx([-0.02, -0.05, 0.01])
    assert list(report["vs_tfidf"]) == ["selfsup+dpo-rake"]
    row = report["methods"]["selfsup+dpo"]["eval/gold/correctness"]
    assert row["per_seed"] == [0.42, 0.53, 0.46, 0.9] and report["methods"]["selfsup+dpo"]["seeds"] == [0, 1, 2, 3]
    assert report["sft_reference"]["eval/kl"]["per_seed"] == [0.25, 0.25, 0.25]
