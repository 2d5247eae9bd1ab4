"""The side-by-side benchmark's pure parts: FLOP count, statistics, report assembly, fixture determinism.

The peers themselves are never run here (they need their own venvs and minutes of CPU); jaxspo's own runner is,
once, on a tiny fixture (it drives the library's Phase directly, so a change there can break it silently).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import vs_peers  # noqa: E402
from peers import configs, fixtures, headline, heaps, stats  # noqa: E402

from jaxspo.host_memory import held_heap_environment  # noqa: E402

MODEL = {"matmul": 1000, "num_layers": 2, "attention_width": 8}


def _result(seconds: list[float], reference: bool = True, losses: list[float] | None = None, **extra) -> dict:
    losses = losses or [0.7] * len(seconds)
    steps = [
        {"seconds": s, "real_tokens": 90, "padded_tokens": 160, "width": 10, "loss": l} for s, l in zip(seconds, losses)
    ]
    return {
        "system": "x",
        "config": "x",
        "reference_in_step": reference,
        "steps": steps,
        "time_to_first_step": 5.0,
        "peak_rss_mib": 100.0,
    } | extra


def test_step_flops_by_hand():
    # per token: 6·1000 + 12·(2·10·8) = 7920 trained; + 2·1000 + 4·160 = 2640 for the reference
    assert stats.step_flops(160, 10, 1000, 2, 8, reference=False) == 160 * 7920
    assert stats.step_flops(160, 10, 1000, 2, 8, reference=True) == 160 * (7920 + 2640)


def test_run_summary_uses_only_the_steady_steps():
    result = _result([9.0, 9.0, 1.0, 2.0, 3.0], reference=False)
    out = stats.run_summary(result, MODEL, first_steady=3)
    assert out["seconds_per_step"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert out["real_tokens_per_second"] == pytest.approx(3 * 90 / 6.0)
    assert out["padded_tokens_per_second"] == pytest.approx(3 * 160 / 6.0)
    assert out["flops_per_second"] == pytest.approx(3 * 160 * 7920 / 6.0)
    with pytest.raises(ValueError, match="steady state starts at step 6"):
        stats.steady(result["steps"], 6)


def test_config_summary_medians_and_fraction_of_peak():
    runs = [stats.run_summary(_result([1.0, s, s]), MODEL, 2) for s in (1.0, 2.0, 4.0)]
    out = stats.config_summary(runs, {"float32": 1e6, "bfloat16": 2e6}, "float32")
    assert out["runs"] == 3
    assert out["seconds_per_step"] == {"min": 1.0, "median": 2.0, "max": 4.0}
    assert out["real_tokens_per_second"] == pytest.approx(90 / 2.0)
    assert out["fraction_of_peak"] == pytest.approx(out["flops_per_second"] / 1e6)
    assert stats.config_summary(runs, {}, "float32")["fraction_of_peak"] is None


def test_loss_agreement():
    losses = {"trl_fp32": [0.69, 0.70, 0.60, 0.5, 0.4, 9.0], "jaxspo_a": [0.69, 0.71, 0.60, 0.5, 0.4, 0.0]}
    agreement = stats.loss_agreement(losses, "trl_fp32")
    assert agreement["trl_fp32"] == 0.0 and agreement["jaxspo_a"] == pytest.approx(0.01)  # step 6 not compared
    assert stats.loss_agreement({"jaxspo_a": [0.1]}, "trl_fp32") == {"jaxspo_a": None}


def test_jaxspo_flag_and_precision():
    assert configs.parse_jaxspo_flag("bf16:model.dtype=bfloat16,model.remat=true") == (
        "jaxspo_bf16",
        ["model.dtype=bfloat16", "model.remat=true"],
    )
    with pytest.raises(ValueError, match="not key=value"):  # a comma inside a value needs ';' separators
        configs.parse_jaxspo_flag("jaxspo_t:loss.terms={dpo: 1.0, sft: 0.1}")
    assert configs.parse_jaxspo_flag("t:loss.terms={dpo: 1.0, sft: 0.1};loss.beta=0.2") == (
        "jaxspo_t",
        ["loss.terms={dpo: 1.0, sft: 0.1}", "loss.beta=0.2"],
    )
    with pytest.raises(ValueError, match="expected NAME"):
        configs.parse_jaxspo_flag("model.dtype=bfloat16")
    with pytest.raises(ValueError, match="not key=value"):
        configs.parse_jaxspo_flag("x:model.dtype")
    with pytest.raises(ValueError, match="--heaps"):  # the heap is the harness's dimension, not a configuration
        configs.parse_jaxspo_flag("x:model.remat=true,trainer.host_heap=hold")
    with pytest.raises(ValueError, match="without '@'"):
        configs.parse_jaxspo_flag("a@b:model.remat=true")
    table = configs.all_configs({"jaxspo_bf16": ["model.dtype=bfloat16"], "jaxspo_p16": ["model.param_dtype=bfloat16"]})
    assert table["jaxspo_bf16"]["precision"] == "bfloat16" and table["jaxspo_resident"]["precision"] == "float32"
    assert (
        table["jaxspo_p16"]["precision"] == "bfloat16"
        and configs.jaxspo_precision(["model.dtype=float32"]) == "float32"
    )
    assert not any("held" in name for name in table)  # no hand-listed heap twins: heaps are a product (peers/heaps.py)
    assert {
        "trl_fp32",
        "trl_fp32_precomputed",
        "trl_defaults",
        "tunix_fp32",
        "tunix_bf16",
        "jaxspo_precomputed",
    } <= set(table)


def test_report_assembly():
    args = argparse.Namespace(
        shapes="small", rounds=2, steps=3, steady_from=2, batch_size=8, max_length=128, beta=0.1, lr=1e-4
    )
    table = configs.all_configs({})
    results = {
        "small": {
            ("trl_fp32", "glibc"): [_result([1.0, 2.0, 2.0], losses=[0.69, 0.70, 0.71]), {"error": "exit 1: boom"}],
            ("trl_fp32", "held"): [
                _result([1.0, 4.0, 4.0], losses=[0.69, 0.70, 0.71], allocator_env=held_heap_environment())
            ],
            ("jaxspo_resident", "held"): [_result([1.0, 1.0, 1.0], losses=[0.69, 0.70, 0.72], same_order=True)],
            ("jaxspo_precomputed", "glibc"): [
                _result([1.0, 1.0, 1.0], reference=False, losses=[0.0, 0.0, 0.0], same_order=False)
            ],
        }
    }
    info = {"small": {"parameters": {"matmul": 1000}, "num_layers": 2, "hidden_size": 8}}
    peak = {"best": {"float32": 1e9, "bfloat16": 2e9}}
    out = json.loads(json.dumps(vs_peers.report(args, table, info, results, peak, heaps.heap_table())))  # JSON-able
    shape = out["shapes"]["small"]
    assert shape["errors"] == {"trl_fp32@glibc": ["exit 1: boom"]}
    assert shape["runs"]["trl_fp32@glibc"]["runs"] == 1 and shape["runs"]["trl_fp32@held"]["heap"] == "held"
    assert shape["runs"]["trl_fp32@held"]["allocator_env"] == held_heap_environment()
    top = shape["headline"]["exact_fp32"]
    assert (top["fastest_peer"]["config"], top["fastest_peer"]["heap"]) == (
        "trl_fp32",
        "glibc",
    )  # 2 s/step beats 4 s/step
    assert top["ratio"] == pytest.approx(2.0) and top["jaxspo_best"]["time_to_first_step"] == 5.0
    agreement = shape["loss_max_abs_diff_steps_1_5_vs_trl_fp32"]
    assert (
        agreement["jaxspo_resident@held"] == pytest.approx(0.01) and "jaxspo_precomputed@glibc" not in agreement
    )  # another row order
    assert out["matmul_peak_flops_per_second"] == peak and out["settings"]["heaps"]["held"] == held_heap_environment()


def test_last_json_line_skips_other_output():
    text = 'log line\n{"not": "a result"}\n{"system": "trl", "steps": []}\n{broken\n'
    assert vs_peers.last_json_line(text) == {"system": "trl", "steps": []}
    with pytest.raises(ValueError):
        vs_peers.last_json_line("nothing\n")


def test_order_is_jaxspo_batch_order(tmp_path):
    from jaxspo.data.pipeline import BatchPipeline

    vs_peers.write_order(tmp_path / "o.json", 40, 8, 3)
    order = json.loads((tmp_path / "o.json").read_text())
    it = BatchPipeline({"r": np.arange(40)}, 8, 0)
    assert order == [int(r) for s in range(3) for r in it.rows(s)]


def test_parameter_counts_match_the_issue_shapes():
    for name, total in (("small", 4_212_992), ("medium", 27_402_752)):
        shape = fixtures.SHAPES[name]
        config = {
            "hidden_size": shape.hidden_size,
            "num_hidden_layers": shape.num_layers,
            "vocab_size": 2048,
            "num_attention_heads": shape.num_heads,
            "intermediate_size": shape.intermediate_size,
            "tie_word_embeddings": False,
        }
        assert fixtures.parameter_counts(config)["total"] == total


def test_fixture_is_deterministic(tmp_path):
    spec = fixtures.DataSpec(num_pairs=48, lexicon_size=80)
    infos = [fixtures.build_fixture(tmp_path / str(i), "tiny", spec) for i in range(2)]
    assert infos[0] == infos[1]
    assert (
        infos[0]["parameters"]["total"]
        == fixtures.parameter_counts(json.loads((tmp_path / "0/tiny/model/config.json").read_text()))["total"]
    )
    for name in ("model/model.safetensors", "model/tokenizer.json", "train.jsonl", "tokens.jsonl"):
        assert (tmp_path / "0/tiny" / name).read_bytes() == (tmp_path / "1/tiny" / name).read_bytes(), name
    other = fixtures.build_fixture(tmp_path / "2", "tiny", fixtures.DataSpec(num_pairs=48, lexicon_size=80, seed=1))
    assert (tmp_path / "2/tiny/train.jsonl").read_bytes() != (tmp_path / "0/tiny/train.jsonl").read_bytes()
    assert 258 < other["vocab_size"] <= fixtures.VOCAB_SIZE  # bytes + 2 specials + merges (a small corpus has fewer)


def test_jaxspo_reads_the_fixture_like_trl(tmp_path):
    """jaxspo's encoder gives the fixture's rows exactly the ids the peers use (prompt + response + </s>)."""
    from jaxspo.data.encode import encode_preference_rows
    from jaxspo.models.hf_io import load_tokenizer

    fixtures.build_fixture(tmp_path, "tiny", fixtures.DataSpec(num_pairs=16, lexicon_size=40))
    folder = tmp_path / "tiny"
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    tokens = [json.loads(line) for line in (folder / "tokens.jsonl").read_text().splitlines()]
    arrays = encode_preference_rows(rows, load_tokenizer(folder / "model"), max_length=128, max_prompt_length=64)
    for i, t in enumerate(tokens):
        for side in ("chosen", "rejected"):
            ids = arrays[f"{side}_tokens"][i][arrays[f"{side}_valid"][i]].tolist()
            assert ids == t["prompt_ids"] + t[f"{side}_ids"]
            assert arrays[f"{side}_loss_mask"][i].sum() == len(t[f"{side}_ids"])


@pytest.mark.slow  # a child process trains 3 steps of the tiny fixture model (~30 CPU-s)
def test_the_jaxspo_runner_trains_the_fixture_in_the_given_order(tmp_path):
    fixtures.build_fixture(tmp_path, "tiny", fixtures.DataSpec(num_pairs=16, lexicon_size=40))
    order = tmp_path / "order.json"
    vs_peers.write_order(order, 16, batch_size=2, steps=3)
    runner = Path(vs_peers.__file__).parent / "peers" / "run_jaxspo.py"
    command = [sys.executable, str(runner), "--fixture", str(tmp_path / "tiny"), "--order", str(order)]
    command += ["--steps", "3", "--batch-size", "2", "--max-length", "64", "--config", "jaxspo_precomputed"]
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]  # one CPU device, as bench
    env = os.environ | {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    done = subprocess.run(command + ["loss.reference=precomputed"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = vs_peers.last_json_line(done.stdout)
    assert result["system"] == "jaxspo" and result["same_order"] and not result["reference_in_step"]
    losses = [step["loss"] for step in result["steps"]]
    assert len(losses) == 3 and abs(losses[0] - np.log(2)) < 1e-6  # the policy starts at the reference
    assert all(step["real_tokens"] <= step["padded_tokens"] for step in result["steps"])


def _run(system: str, config: str, heap: str, speed: float, precision: str = "float32") -> dict:
    return {
        "system": system,
        "config": config,
        "heap": heap,
        "precision": precision,
        "real_tokens_per_second": speed,
        "time_to_first_step": 3.0,
        "peak_rss_mib": 500.0,
    }


def test_headline_is_the_max_over_every_peer_configuration_and_heap():
    runs = [
        _run("trl", "trl_fp32", "glibc", 3800.0),
        _run("trl", "trl_fp32", "held", 4300.0),
        _run("trl", "trl_fp32", "make", 2000.0),
        _run("trl", "trl_defaults", "glibc", 4100.0, "bfloat16"),
        _run("tunix", "tunix_fp32", "held", 4400.0),
        _run("jaxspo", "jaxspo_packed", "glibc", 4000.0),
        _run("jaxspo", "jaxspo_packed", "held", 4840.0),
        _run("jaxspo", "jaxspo_resident", "make", 4500.0),
    ]
    out = headline.shape_headline(runs)
    exact = out["exact_fp32"]
    assert (exact["fastest_peer"]["system"], exact["fastest_peer"]["config"], exact["fastest_peer"]["heap"]) == (
        "tunix",
        "tunix_fp32",
        "held",
    )
    assert (exact["jaxspo_best"]["config"], exact["jaxspo_best"]["heap"]) == ("jaxspo_packed", "held")
    assert exact["ratio"] == pytest.approx(4840.0 / 4400.0)
    assert out["by_peer"]["trl"]["fastest"]["heap"] == "held" and out["by_peer"]["trl"]["exact_fp32"] == pytest.approx(
        4840.0 / 4300.0
    )
    assert out["by_peer"]["tunix"]["any_config"] == pytest.approx(4840.0 / 4400.0)
    # the fastest peer under the slowest heap only would have flattered jaxspo: dropping its other heaps changes the
    # answer
    slow_heap_only = [r for r in runs if r["system"] == "jaxspo" or r["heap"] == "make"]
    assert headline.shape_headline(slow_heap_only)["exact_fp32"]["ratio"] == pytest.approx(4840.0 / 2000.0)


def test_exact_fp32_headline_never_picks_a_bf16_jaxspo_configuration():
    runs = [
        _run("trl", "trl_fp32", "glibc", 1000.0),
        _run("jaxspo", "jaxspo_packed", "glibc", 1500.0),
        _run("jaxspo", "jaxspo_packed_bf16", "held", 3000.0, "bfloat16"),
    ]
    out = headline.shape_headline(runs)
    assert out["exact_fp32"]["jaxspo_best"]["config"] == "jaxspo_packed" and out["exact_fp32"][
        "ratio"
    ] == pytest.approx(1.5)
    assert out["any_config"]["jaxspo_best"]["config"] == "jaxspo_packed_bf16" and out["any_config"][
        "ratio"
    ] == pytest.approx(3.0)
    only_bf16 = headline.shape_headline([runs[0], runs[2]])
    assert only_bf16["exact_fp32"] == {"jaxspo_best": None, "fastest_peer": runs[0] | {}, "ratio": None}
    assert headline.shape_headline([runs[1]])["any_config"]["ratio"] is None  # no peer ran


MAKE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def test_the_make_heap_is_read_from_the_makefile(tmp_path):
    assert heaps.makefile_heap_environment() == MAKE_ENV  # this repository's Makefile RUN_ENV
    makefile = tmp_path / "Makefile"
    makefile.write_text("X := 1\nRUN_ENV := MALLOC_ARENA_MAX=2 TOKENIZERS_PARALLELISM=false\n")
    assert heaps.heap_table(makefile) == {
        "glibc": {},
        "make": {"MALLOC_ARENA_MAX": "2"},
        "held": held_heap_environment(),
    }
    makefile.write_text("RUN_ENV := TOKENIZERS_PARALLELISM=false\n")
    assert list(heaps.heap_table(makefile)) == ["glibc", "held"]  # 'make' would be glibc's defaults again
    makefile.write_text("all:\n")
    with pytest.raises(ValueError, match="RUN_ENV"):
        heaps.makefile_heap_environment(makefile)


def _captured_runs(monkeypatch, tmp_path, system: str, heap: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment ``vs_peers.run_one`` starts a runner with, the harness under the Makefile's
    variables."""
    for key, value in MAKE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1:glibc.rtld.optional_static_tls=512")
    seen = {}

    def fake_run(command, env, **kwargs):
        seen["command"], seen["env"] = command, env
        return argparse.Namespace(returncode=0, stdout=json.dumps({"system": system, "steps": []}) + "\n", stderr="")

    monkeypatch.setattr(vs_peers.subprocess, "run", fake_run)
    args = argparse.Namespace(steps=3, batch_size=8, max_length=128, beta=0.1, lr=1e-4)
    name = "trl_fp32" if system == "trl" else "jaxspo_packed"
    spec = configs.all_configs({})[name]
    assert vs_peers.run_one(
        Path("python"), name, spec, heap, heaps.heap_table(), tmp_path, tmp_path / "o.json", args
    ) == {"system": system, "steps": []}
    return seen["command"], seen["env"]


def test_glibc_defaults_reach_a_peer_without_the_harness_malloc_variables(monkeypatch, tmp_path):
    _, env = _captured_runs(monkeypatch, tmp_path, "trl", "glibc")
    assert (
        not [k for k in env if k.startswith("MALLOC_")]
        and env["GLIBC_TUNABLES"] == "glibc.rtld.optional_static_tls=512"
    )
    assert env["TOKENIZERS_PARALLELISM"] == "false" and "BENCH_T0" in env
    assert {
        k: v for k, v in _captured_runs(monkeypatch, tmp_path, "trl", "make")[1].items() if k.startswith("MALLOC_")
    } == MAKE_ENV
    assert {
        k: v for k, v in _captured_runs(monkeypatch, tmp_path, "trl", "held")[1].items() if k.startswith("MALLOC_")
    } == held_heap_environment()


def test_jaxspo_heaps_map_to_its_host_heap_setting(monkeypatch, tmp_path):
    command, env = _captured_runs(monkeypatch, tmp_path, "jaxspo", "held")
    assert command[-1] == "trainer.host_heap=hold" and not [
        k for k in env if k.startswith("MALLOC_")
    ]  # in-process, as a user sets it
    command, env = _captured_runs(monkeypatch, tmp_path, "jaxspo", "make")
    assert (
        command[-1] == "trainer.host_heap=system"
        and {k: v for k, v in env.items() if k.startswith("MALLOC_")} == MAKE_ENV
    )
    assert _captured_runs(monkeypatch, tmp_path, "jaxspo", "glibc")[0][-1] == "trainer.host_heap=system"


def test_an_unknown_heap_or_configuration_names_the_option():
    assert vs_peers.selected("", ["glibc", "held"], "--heaps") == ["glibc", "held"]
    assert vs_peers.selected(" held ,glibc", ["glibc", "held"], "--heaps") == ["held", "glibc"]
    with pytest.raises(SystemExit, match="--heaps: unknown name"):
        vs_peers.selected("glibc,fast", ["glibc", "held"], "--heaps")


def test_a_runner_reports_the_heap_it_was_started_with(monkeypatch):
    """End to end without a peer: a child built by runner_environment under the harness's Makefile variables
    reports (runner_common.emit) no MALLOC_* under glibc's defaults and exactly the held variables under ``held``."""
    for key, value in MAKE_ENV.items():
        monkeypatch.setenv(key, value)
    code = "import runner_common as r; r.emit('trl', 'trl_fp32', r.StepLog(), True)"
    seen = {}
    for heap in ("glibc", "held"):
        env = heaps.runner_environment(dict(os.environ), heap, "trl", heaps.heap_table())
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=Path(vs_peers.HERE) / "peers",
            capture_output=True,
            text=True,
            check=True,
        )
        seen[heap] = vs_peers.last_json_line(done.stdout)["allocator_env"]
    assert seen == {"glibc": {}, "held": held_heap_environment()}
