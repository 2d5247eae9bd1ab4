"""The bad inputs of issue 22, each ending in one ``jaxspo: …`` line and its exit status (no traceback), the
compressed-file reader, ``data.on_bad_row: skip`` for unreadable lines, and the quiet start without a TPU."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxspo import cli
from jaxspo.data.files import compression, read_json_lines
from jaxspo.data.sources import SourceConfig, read_split
from jaxspo.errors import DataError
from tests.cli_fuzz_support import TINY_MODEL, TINY_RUN, good_row, run_cli

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def one_error_line(argv: list[str], status: int) -> str:
    got, stderr = run_cli(argv)
    assert got == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("jaxspo: ") and " error: " in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from tests import hf_tiny

    return hf_tiny.save(hf_tiny.build_hf("gpt2"), tmp_path_factory.mktemp("gpt2"))


def test_folder_of_pickle_weights_without_config_is_refused_as_pickle(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"never opened")
    line = one_error_line(["train", "configs/demo.yaml", f"model.path={tmp_path}", f"run_dir={tmp_path / 'run'}"], 1)
    assert line.startswith(
        f"jaxspo: checkpoint error: {tmp_path / 'pytorch_model.bin'}: refusing to load a pickle checkpoint"
    )
    assert "safetensors" in line


def test_full_folder_with_pickle_weights_is_one_line(hf_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(hf_folder, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    line = one_error_line(
        ["train", "configs/demo.yaml", *TINY_RUN, f"model.path={folder}", f"run_dir={tmp_path / 'run'}"], 1
    )
    assert line.startswith(
        f"jaxspo: checkpoint error: {folder / 'pytorch_model.bin'}: refusing to load a pickle checkpoint"
    )


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def jsonl_source(tmp_path: Path) -> str:
    return f"data.source={{kind: jsonl, path: '{tmp_path}/{{split}}.jsonl'}}"


def test_malformed_line_names_file_and_line(tmp_path):
    good = [json.dumps(good_row(i)).encode() for i in range(4)]
    write_lines(tmp_path / "train.jsonl", good[:2] + [b'{"prompt": "reverse 1 :", '] + good[2:])
    write_lines(tmp_path / "test.jsonl", good)
    line = one_error_line(
        ["train", "configs/demo.yaml", *TINY_RUN, *TINY_MODEL, jsonl_source(tmp_path), f"run_dir={tmp_path / 'run'}"], 1
    )
    assert line.startswith(f"jaxspo: data error: {tmp_path / 'train.jsonl'}:3: invalid JSON: ")
    assert line.endswith("or set data.on_bad_row=skip to leave such lines out")


def test_skip_counts_unparsable_lines_and_bytes_by_reason(tmp_path):
    from jaxspo.config import load_config
    from jaxspo.train.run import Run

    good = [json.dumps(good_row(i)).encode() for i in range(6)]
    bad = [b'{"prompt": ', b"\xff\xfe not text", b"[1, 2]", json.dumps(good_row(9) | {"chosen": 5}).encode()]
    write_lines(tmp_path / "train.jsonl", good[:3] + bad + [b'{"prompt": '] + good[3:])
    write_lines(tmp_path / "test.jsonl", good)
    cfg = load_config("configs/demo.yaml", TINY_RUN + TINY_MODEL + [jsonl_source(tmp_path), "data.on_bad_row=skip"])
    run = Run(cfg, tmp_path)
    report = {r["source"]: r for r in json.loads((tmp_path / "data_report.json").read_text())}[
        str(tmp_path / "train.jsonl")
    ]
    assert report["rows"] == 11 and report["kept"] == 6
    assert report["skipped"] == {
        "line: invalid JSON": 2,
        "line: not UTF-8 text": 1,
        "line: not a JSON object": 1,
        "field 'chosen' must be a str": 1,
    }
    assert len(run.encoded("train")["chosen_tokens"]) == 6


@pytest.mark.parametrize(
    "content, on_bad_row, message",
    [
        (b"", "error", "holds no rows"),
        (b"\n  \n", "skip", "holds no rows"),
        (b'{"prompt": \n\xff\n', "skip", "all 2 rows are malformed, e.g. line 1: invalid JSON"),
    ],
)
def test_empty_split_or_no_valid_row_is_one_line_naming_the_file(tmp_path, content, on_bad_row, message):
    (tmp_path / "train.jsonl").write_bytes(content)
    write_lines(tmp_path / "test.jsonl", [json.dumps(good_row(0)).encode()])
    argv = [
        "train",
        "configs/demo.yaml",
        *TINY_RUN,
        *TINY_MODEL,
        jsonl_source(tmp_path),
        f"data.on_bad_row={on_bad_row}",
        f"run_dir={tmp_path / 'run'}",
    ]
    assert one_error_line(argv, 1).startswith(f"jaxspo: data error: {tmp_path / 'train.jsonl'}: {message}")


@pytest.mark.parametrize(
    "suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress), ("", lambda b: b)]
)
def test_compressed_files_read_like_plain_ones(tmp_path, suffix, compress):
    rows = [good_row(i) for i in range(5)]
    (tmp_path / f"train.jsonl{suffix}").write_bytes(compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    name, read = read_split(SourceConfig(kind="jsonl", path=str(tmp_path / f"{{split}}.jsonl{suffix}")), "train")
    assert read == rows and name.endswith(suffix or ".jsonl")
    (tmp_path / "named.jsonl").write_bytes(compress(b'{"a": 1}\n'))  # recognised by content, not by name
    assert read_json_lines(tmp_path / "named.jsonl") == [{"a": 1}]


def test_zstd_without_the_package_says_to_install_it(tmp_path):
    path = tmp_path / "train.jsonl.zst"
    try:
        import zstandard
    except ImportError:
        path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
        assert compression(path) == "zstd"
        with pytest.raises(
            DataError,
            match=r"train\.jsonl\.zst: zstd-compressed, and the zstandard package is not installed; pip "
            r"install zstandard",
        ):
            read_json_lines(path)
    else:
        path.write_bytes(zstandard.ZstdCompressor().compress(b'{"a": 1}\n'))
        assert read_json_lines(path) == [{"a": 1}]


def test_damaged_archive_is_named(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:60])
    with pytest.raises(DataError, match=r"train\.jsonl\.gz: the compressed data is damaged"):
        read_json_lines(path)


def manual_dir(tmp_path: Path, name: str) -> Path:
    out = tmp_path / "manual"
    shutil.copytree(FIXTURES / name, out)
    return out


def test_prepare_split_whose_rows_are_all_rejected(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    rows = "".join(json.dumps({"prompt": "p", "response": "r", "helpfulness": 2}) + "\n" for _ in range(2))
    (manual / "train.jsonl").write_text(rows)
    line = one_error_line(
        ["data", "prepare", "helpsteer2", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "tfds")], 1
    )
    assert line.startswith(
        f"jaxspo: data error: {manual / 'train.jsonl'}: no example for split 'train' of "
        f"helpsteer2 (rejected: {{'tie: equal helpfulness': 1}})"
    )


def test_prepare_folder_with_one_side_file(tmp_path):
    manual = manual_dir(tmp_path, "tldr_comparisons")
    for path in (manual / "comparisons").glob("*.json"):  # keep only the train rows: validation has none
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if '"split": "train"' in line))
    line = one_error_line(
        ["data", "prepare", "tldr_comparisons", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "tfds")], 1
    )
    assert "no example for split 'validation' of tldr_comparisons (none of their rows belongs to this split)" in line


def test_prepare_reads_xz_files_and_rejects_undecodable_lines(tmp_path):
    manual = manual_dir(tmp_path, "helpsteer2")
    plain = (manual / "train.jsonl").read_bytes()
    (manual / "train.jsonl").unlink()
    (manual / "train.jsonl.xz").write_bytes(lzma.compress(plain + b"\xfd\xff not text\n"))
    from jaxspo.data.prepare import prepare

    summary = prepare("helpsteer2", str(manual), str(tmp_path / "tfds"))
    assert summary["splits"]["train"]["rows"] == 2
    assert summary["splits"]["train"]["rejected"]["invalid: line not UTF-8 text"] == 1


def test_score_clamps_max_length_to_the_model_positions(hf_folder, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(good_row(i)) + "\n" for i in range(2)))
    assert (
        cli.main(["score", str(hf_folder), str(data), "--out", str(tmp_path / "scores.jsonl")]) == 0
    )  # default --max-length 1024
    assert (
        "truncated at --max-length 64; --max-length 1024 clamped to the model's 64 positions" in capsys.readouterr().out
    )


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch, tmp_path):
    from jaxspo.train import metrics_log

    def broken(metrics, out):
        raise ZeroDivisionError("a bug")

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"phase": "preference", "step": 1, "loss": 0.5}) + "\n")
    monkeypatch.setattr(metrics_log, "plot_curves", broken)
    status, stderr = run_cli(["plot", str(tmp_path)])
    assert status == 70
    assert "Traceback" in stderr and "ZeroDivisionError: a bug" in stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("jaxspo: internal error: the ZeroDivisionError above is a bug in jaxspo; please report it")
    )


def test_argument_errors_are_one_line_with_status_2():
    line = one_error_line(["score", "model", "data.jsonl", "--out", "o.jsonl", "--batch-size", "0"], 2)
    assert (
        line == "jaxspo: usage error: jaxspo score: argument --batch-size: expected a positive integer, "
        "got 0; see jaxspo score --help"
    )


def test_no_tpu_probing_noise_without_jax_platforms(tmp_path):
    """libtpu probes when JAX's backends start, at a run's first device use (its initial parameters): a run of no
    steps starts them as a longer one does and still evaluates on the devices, without compiling a train step."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(REPO)
    overrides = TINY_RUN + TINY_MODEL + ["trainer.steps=0", "checkpoint.every_steps=0", f"run_dir={tmp_path / 'run'}"]
    done = subprocess.run(
        [sys.executable, "-m", "jaxspo", "train", "configs/demo.yaml", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "summary.md").is_file()  # the run reached its evaluations on the devices
    for noise in ("Failed to find host bounds", "could not determine TPU", "unexpected worker hostname", "libtpu"):
        assert noise not in done.stderr, done.stderr[-3000:]


def test_platform_choice_leaves_an_explicit_choice_alone():
    from jaxspo.platforms import choose_platforms

    assert choose_platforms({"JAX_PLATFORMS": "tpu"}) is None
