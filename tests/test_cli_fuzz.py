"""Fuzz of the command line: bad configs, data files and arguments go through every subcommand's entry point
(``jaxspo.cli.main``, in-process; damaged folders: test_cli_fuzz_folders.py). Each must end in exactly one error
line ``jaxspo: <kind> error: …`` with its documented exit status (2 config / usage, 1 any other input), no
traceback, and no input file changed."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import lzma
import typing
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from jaxspo.config import Config

from tests.cli_fuzz_support import (
    CONFIG_STATUS,
    FUZZ,
    INPUT_STATUS,
    TINY_MODEL,
    TINY_RUN,
    assert_one_error_line,
    good_row,
    workspace,
)


# ---------------------------------------------------------------------------------------------
# Configs: wrong types, unknown keys, out-of-range values, impossible combinations, broken files
# ---------------------------------------------------------------------------------------------


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, type) of every int / float / bool / str setting of the config."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, key + ".")
        elif tp in (int, float, bool, str):
            out.append((key, tp))
    return out


LEAVES = _leaves(Config)
WRONG_VALUES = {
    int: ["abc", "[1, 2]", "{a: 1}", "1.5", "true"],
    float: ["abc", "[1]", "true", "{a: 1}"],
    bool: ["maybe", "3", "[true]"],
    str: ["[1]", "3", "{a: b}"],
}
OUT_OF_RANGE = [
    "trainer.batch_size=0",
    "trainer.grad_accum_steps=0",
    "trainer.steps=-1",
    "loss.beta=0",
    "loss.beta=-1",
    "loss.label_smoothing=1.0",
    "optimizer.learning_rate=0",
    "optimizer.schedule=wavy",
    "data.max_prompt_length=32",
    "logging.log_every=0",
    "trainer.host_heap=big",
    "trainer.on_nonfinite=ignore",
    "data.on_bad_row=warn",
    "data.workers=-1",
    "data.prefetch=-1",
    "checkpoint.keep_last=0",
    "checkpoint.every_steps=-1",
    "data.auto_buckets=-1",
    "data.buckets=[64]",
    "data.buckets=[8, 4]",
    "data.layout=zigzag",
    "loss.reference=sometimes",
    "loss.terms={}",
    "loss.terms={nodpo: 1}",
    "mesh.rules.embed=warp",
    "mesh.rules.nonexistent=data",
    "data.source.kind=csv",
    "data.source.kind=jsonl",
    "data.source.kind=tfds",
    "eval.temperature=nan",
    "loss.kl.temperature=0",
    "loss.params.ropo.alpha=0",
    "loss.params.simpo.gama=1",
    "loss.simpo_gamma=0.5",
    "loss.soft_spo.kl_beta=0.1",
]
IMPOSSIBLE = [  # (overrides, exit status, found while loading the config): combinations of valid values, and
    # values that only the devices or the files can refute
    (["trainer.batch_size=8", "trainer.grad_accum_steps=3"], CONFIG_STATUS, True),
    (["loss.reference=adapter_off"], CONFIG_STATUS, True),
    (["data.auto_buckets=2", "data.buckets=[8]"], CONFIG_STATUS, True),
    (["data.layout=packed", "loss.selfsup.weight=0.5"], CONFIG_STATUS, True),
    (["loss.terms={sequential: 1.0}"], CONFIG_STATUS, True),
    (["loss.terms={robust: 1.0}", "loss.label_smoothing=0.6"], CONFIG_STATUS, True),
    (["loss.terms={exo_pair: 1.0}"], CONFIG_STATUS, True),
    (["data.source.kind=jsonl", "data.source.path=nowhere.jsonl"], CONFIG_STATUS, True),
    (["data.source.kind=jsonl", "data.source.path=/nonexistent/{split}.jsonl"], INPUT_STATUS, False),
    (["mesh.data=3"], CONFIG_STATUS, False),
    (["mesh.data=1", "mesh.fsdp=16"], CONFIG_STATUS, False),
    (["model.path=/nonexistent/model"], INPUT_STATUS, False),
]
BROKEN_FILES = [
    b"trainer: [1, 2\n",
    b"- 1\n- 2\n",
    b"\xff\xfe\x00t\x00",
    b"extends: missing.yaml\n",
    b"extends: recipe.yaml\n",
    b"trainer:\n  steps: 1\n  steps: 2\n  stesp: 3\n",
    b"model: 5\n",
]


@st.composite
def bad_config(draw) -> tuple[list[str], bytes | None, int, bool]:
    """(overrides, recipe file bytes or None for configs/demo.yaml, exit status, whether loading finds it)."""
    kind = draw(st.sampled_from(["wrong_type", "unknown_key", "out_of_range", "impossible", "syntax", "file"]))
    if kind == "wrong_type":
        key, tp = draw(st.sampled_from(LEAVES))
        return [f"{key}={draw(st.sampled_from(WRONG_VALUES[tp]))}"], None, CONFIG_STATUS, True
    if kind == "unknown_key":
        section = draw(st.sampled_from(["", "trainer.", "model.", "data.", "data.source.", "loss.", "lora."]))
        name = draw(st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True))
        if any(
            key == section + name or key.startswith(section + name + ".") for key, _ in LEAVES
        ) or section + name in ("stages", "extends", "run_dir"):
            name += "_x"
        return [f"{section}{name}=1"], None, CONFIG_STATUS, True
    if kind == "out_of_range":
        return [draw(st.sampled_from(OUT_OF_RANGE))], None, CONFIG_STATUS, True
    if kind == "impossible":
        overrides, status, load_time = draw(st.sampled_from(IMPOSSIBLE))
        return overrides, None, status, load_time
    if kind == "syntax":
        return (
            [draw(st.sampled_from(["trainer.steps", "=3", "trainer.steps.x=1", "trainer=3", "trainer.steps=[1"]))],
            None,
            CONFIG_STATUS,
            True,
        )
    return [], draw(st.sampled_from(BROKEN_FILES)), CONFIG_STATUS, True


@FUZZ
@given(case=bad_config(), command=st.sampled_from(["train", "eval", "compile"]))
def test_fuzz_configs(case, command):
    overrides, recipe, status, load_time = case
    if not load_time:
        command = "train"  # found by the devices or the files: compile has neither
    with workspace() as (inputs, outputs):
        config = "configs/demo.yaml"
        if recipe is not None:
            config = str(inputs / "recipe.yaml")
            Path(config).write_bytes(recipe)
        run_dir = [f"run_dir={outputs / 'run'}"] if command == "train" else []
        argv = [command, config, *TINY_RUN, *TINY_MODEL, *run_dir, *overrides]
        if command == "compile":
            argv += ["--topology", "v5p-8"]
        line = assert_one_error_line(argv, inputs, status)
        assert line.startswith(("jaxspo: config error: ", "jaxspo: data error: ", "jaxspo: checkpoint error: "))


# ---------------------------------------------------------------------------------------------
# Data files: malformed JSON, empty files and fields, wrong types, huge rows, bytes, compression
# ---------------------------------------------------------------------------------------------


BAD_LINES = {
    "invalid JSON": b'{"prompt": "reverse 1 :", ',
    "not UTF-8": b'{"prompt": "reverse \xff\xfe :", "chosen": "1", "rejected": "2"}',
    "not an object": b"[1, 2, 3]",
    "missing field": json.dumps({"prompt": "reverse 1 :", "chosen": "1"}).encode(),
    "wrong type": json.dumps({"prompt": "reverse 1 :", "chosen": 5, "rejected": "2"}).encode(),
    "empty field": json.dumps({"prompt": "reverse 1 :", "chosen": "", "rejected": "2"}).encode(),
    "identical": json.dumps({"prompt": "reverse 1 :", "chosen": "1", "rejected": "1"}).encode(),
    "huge and incomplete": json.dumps({"prompt": "reverse " + "1 " * 50_000 + ":", "chosen": "1"}).encode(),
}
HUGE_GOOD = json.dumps({"prompt": "reverse " + "1 " * 50_000 + ":", "chosen": "1 " * 50_000, "rejected": "um"}).encode()
COMPRESSORS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: b"\x28\xb5\x2f\xfd" + b"\x00" * 16,
}  # a zstd frame header: needs the zstandard package


@st.composite
def bad_data(draw) -> tuple[dict[str, bytes], str, list[str]]:
    """({split: file bytes}, file suffix, extra overrides): at least one split that cannot be used."""
    on_bad_row = draw(st.sampled_from(["error", "skip"]))
    suffix = draw(st.sampled_from(list(COMPRESSORS)))
    bad_split = draw(st.sampled_from(["train", "test"]))
    files = {}
    for split in ("train", "test"):
        lines = [json.dumps(good_row(i)).encode() for i in range(draw(st.integers(2, 5)))]
        if draw(st.booleans()):
            lines.append(HUGE_GOOD)
        if split == bad_split:
            shape = draw(st.sampled_from(["empty", "blank", "lines"]))
            if shape == "empty":
                lines = []
            elif shape == "blank":
                lines = [b"", b"  "]
            else:
                bad = draw(st.lists(st.sampled_from(list(BAD_LINES)), min_size=1, max_size=4))
                if on_bad_row == "skip":
                    lines = []  # skipping leaves no valid row: still an error
                for name in bad:
                    lines.insert(draw(st.integers(0, len(lines))), BAD_LINES[name])
        files[split] = COMPRESSORS[suffix](b"\n".join(lines) + b"\n" if lines else b"")
    return files, suffix, [f"data.on_bad_row={on_bad_row}"]


@FUZZ
@given(case=bad_data())
def test_fuzz_data_files(case):
    files, suffix, overrides = case
    with workspace() as (inputs, outputs):
        for split, data in files.items():
            (inputs / f"{split}.jsonl{suffix}").write_bytes(data)
        source = f"data.source={{kind: jsonl, path: '{inputs}/{{split}}.jsonl{suffix}'}}"
        argv = ["train", "configs/demo.yaml", *TINY_RUN, *TINY_MODEL, source, *overrides, f"run_dir={outputs / 'run'}"]
        line = assert_one_error_line(argv, inputs, INPUT_STATUS)
        assert line.startswith("jaxspo: data error: ") and str(inputs) in line


BAD_ARGUMENTS = [
    ["score", "m", "d.jsonl"],
    ["score", "m", "d.jsonl", "--out", "o", "--max-length", "0"],
    ["score", "m", "d.jsonl", "--out", "o", "--batch-size", "-2"],
    ["score", "m", "d.jsonl", "--out", "o", "--max-length", "ten"],
    ["export", "r"],
    ["nonsense"],
    [],
    ["train"],
    ["compile", "configs/demo.yaml"],
    ["data"],
    ["data", "prepare", "hh_rlhf"],
    ["launch", "--dry-run", "--local", "0", "configs/demo.yaml"],
    ["launch", "--dry-run", "--tpu", "t", "configs/demo.yaml"],
    ["train", "configs/demo.yaml", "--no-such-flag"],
    ["label", "d.jsonl", "--out", "o"],
    ["label", "d.jsonl", "--reward-model", "m", "--out", "o", "--temperature", "nan"],
    ["data", "prepare", "hh_rlhf", "--manual-dir", "m", "--soft-label-temperature", "-1"],
]


@FUZZ
@given(argv=st.sampled_from(BAD_ARGUMENTS))
def test_fuzz_arguments(argv):
    with workspace() as (inputs, _):
        status = INPUT_STATUS if argv[:1] == ["launch"] else CONFIG_STATUS
        assert_one_error_line(argv, inputs, status)
