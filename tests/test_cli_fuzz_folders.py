"""Fuzz of the command line with damaged model folders, run directories and dataset folders (bad configs, data
files and arguments: test_cli_fuzz.py). Each must end in exactly one error line with its documented exit status,
no traceback, and no input file changed."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st


from tests.cli_fuzz_support import (
    CONFIG_STATUS,
    FIXTURES,
    FUZZ,
    INPUT_STATUS,
    TINY_MODEL,
    TINY_RUN,
    assert_one_error_line,
    good_row,
    workspace,
)


# ---------------------------------------------------------------------------------------------
# Model folders: missing files, pickle weights, mismatched shapes, truncated safetensors
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from tests import hf_tiny

    return hf_tiny.save(hf_tiny.build_hf("llama2"), tmp_path_factory.mktemp("llama"))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


MODEL_DAMAGE = {
    "no config.json": lambda d, n: (d / "config.json").unlink(),
    "only a pickle": lambda d, n: (
        [p.unlink() for p in d.iterdir()] and (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 pickle")
    ),
    "pickle weights": lambda d, n: (
        (d / "model.safetensors").unlink() or (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 pickle")
    ),
    "no weights": lambda d, n: (d / "model.safetensors").unlink(),
    "truncated safetensors": lambda d, n: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[: n % 4000]
    ),
    "garbage safetensors": lambda d, n: (d / "model.safetensors").write_bytes(bytes([n % 256]) * 64),
    "shape mismatch": lambda d, n: _edit_json(d / "config.json", intermediate_size=48 + n % 8),
    "vocab mismatch": lambda d, n: _edit_json(d / "config.json", vocab_size=80 + n % 8),
    "config not JSON": lambda d, n: (d / "config.json").write_text("{"),
    "config a list": lambda d, n: (d / "config.json").write_text("[1]"),
    "unknown model_type": lambda d, n: _edit_json(d / "config.json", model_type="bert"),
    "no tokenizer": lambda d, n: [
        p.unlink() for p in d.iterdir() if p.name.startswith(("tokenizer", "special_tokens"))
    ],
}


@FUZZ
@given(
    damage=st.sampled_from(list(MODEL_DAMAGE)), n=st.integers(0, 10_000), command=st.sampled_from(["train", "score"])
)
def test_fuzz_model_folders(hf_folder, damage, n, command):
    with workspace() as (inputs, outputs):
        folder = inputs / "model"
        shutil.copytree(hf_folder, folder)
        MODEL_DAMAGE[damage](folder, n)
        data = inputs / "pairs.jsonl"
        data.write_text("".join(json.dumps(good_row(i)) + "\n" for i in range(3)))
        if command == "train":
            argv = ["train", "configs/demo.yaml", *TINY_RUN, f"model.path={folder}", f"run_dir={outputs / 'run'}"]
        else:
            argv = ["score", str(folder), str(data), "--out", str(outputs / "scored.jsonl"), "--max-length", "16"]
        line = assert_one_error_line(argv, inputs, INPUT_STATUS)
        assert line.startswith("jaxspo: checkpoint error: ") and str(folder) in line


# ---------------------------------------------------------------------------------------------
# Run directories: missing files, corrupt config, corrupt checkpoints and metrics
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run directory as a finished run leaves it (config.yaml, params/, tokenizer/, metrics.jsonl), made
    without training."""
    import jax
    import numpy as np

    from jaxspo.checkpoint import save_params
    from jaxspo.config import dump_yaml, load_config
    from jaxspo.data.tokenizer import build_task_tokenizer
    from jaxspo.train.state import abstract_model

    run = tmp_path_factory.mktemp("run")
    tokenizer = build_task_tokenizer()
    cfg = load_config("configs/demo.yaml", TINY_RUN + TINY_MODEL + [f"model.vocab_size={len(tokenizer)}"])
    dump_yaml(cfg, run / "config.yaml")
    tokenizer.save_pretrained(str(run / "tokenizer"))
    _, abstract = abstract_model(cfg.model)
    save_params(
        jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract), run / "params"
    )  # values do not matter here
    (run / "metrics.jsonl").write_text(json.dumps({"phase": "preference", "step": 1, "loss": 0.7}) + "\n")
    return run


def assert_params_read_intact(run: Path) -> None:
    """The damaged params/ of ``run`` still restore to the fixture's values (all zeros): the damaged file is one
    the restore does not read (a commit marker, metadata of another generation), so no number changed."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxspo.checkpoint import restore_params
    from jaxspo.config import load_config
    from jaxspo.train.state import abstract_model

    _, abstract = abstract_model(load_config(run / "config.yaml").model)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    leaves = jax.tree.leaves(nnx.to_pure_dict(restore_params(run / "params", target)))
    assert leaves and not any(np.any(np.asarray(leaf)) for leaf in leaves), (
        f"{run}/params: a damaged checkpoint loaded other numbers without an error"
    )


def _damage_params(run: Path, n: int) -> None:
    files = sorted(p for p in (run / "params").rglob("*") if p.is_file())
    target = files[n % len(files)]
    target.write_bytes(target.read_bytes()[: n % 64] + b"\x00garbage")


RUN_DAMAGE = {
    "no config.yaml": lambda r, n: (r / "config.yaml").unlink(),
    "no params": lambda r, n: shutil.rmtree(r / "params"),
    "no tokenizer": lambda r, n: shutil.rmtree(r / "tokenizer"),
    "config.yaml unknown key": lambda r, n: (r / "config.yaml").write_text(
        (r / "config.yaml").read_text() + "nonsense: 1\n"
    ),
    "config.yaml not YAML": lambda r, n: (r / "config.yaml").write_text("model: [1,\n"),
    "params corrupt": _damage_params,
    "params emptied": lambda r, n: [p.unlink() for p in (r / "params").rglob("*") if p.is_file()],
    "metrics corrupt": lambda r, n: (r / "metrics.jsonl").write_text(
        '{"phase": "preference", "step": 1, "loss": 0.7}\n{"phase": \n'
    ),
    "metrics missing": lambda r, n: (r / "metrics.jsonl").unlink(),
}
RUN_COMMANDS = {  # damage → the commands that read what was damaged (eval falls back to the config's start
    # when params/ is missing, and tokenises with the config's tokenizer)
    "metrics corrupt": ["plot"],
    "metrics missing": ["plot"],
    "no params": ["export"],
    "no tokenizer": ["export"],
}


@FUZZ
@given(damage=st.sampled_from(list(RUN_DAMAGE)), n=st.integers(0, 10_000), pick=st.integers(0, 2))
def test_fuzz_run_directories(run_folder, damage, n, pick):
    commands = RUN_COMMANDS.get(
        damage, ["export", "eval", "plot"] if damage.startswith("no config") else ["export", "eval"]
    )
    command = commands[pick % len(commands)]
    with workspace() as (inputs, outputs):
        run = inputs / "run"
        shutil.copytree(run_folder, run)
        RUN_DAMAGE[damage](run, n)
        argv = {
            "export": ["export", str(run), "--out", str(outputs / "hf")],
            "eval": ["eval", str(run), "--out", str(outputs / "eval")],
            "plot": ["plot", str(run), "--out", str(outputs / "c.png")],
        }[command]
        status = CONFIG_STATUS if damage.startswith("config.yaml") else INPUT_STATUS
        line = assert_one_error_line(
            argv, inputs, status, (lambda: assert_params_read_intact(run)) if damage == "params corrupt" else None
        )
        assert line is None or str(run) in line


# ---------------------------------------------------------------------------------------------
# Dataset folders (jaxspo data prepare) and command-line arguments
# ---------------------------------------------------------------------------------------------


def _tldr_train_only(manual: Path, n: int) -> None:
    shutil.copytree(FIXTURES / "tldr_comparisons", manual)
    for path in (manual / "comparisons").glob("*.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["split"] == "train"))


def _helpsteer_rejected(manual: Path, n: int, compress=lambda b: b, suffix: str = "") -> None:
    manual.mkdir()
    rows = [{"prompt": "p", "response": "r", "helpfulness": 2}] * 2  # equal helpfulness: every pair rejected
    for split in ("train", "validation"):
        (manual / f"{split}.jsonl{suffix}").write_bytes(compress("".join(json.dumps(r) + "\n" for r in rows).encode()))


DATASET_DAMAGE = {
    "only the train side file": ("tldr_comparisons", _tldr_train_only),
    "every row rejected": ("helpsteer2", _helpsteer_rejected),
    "every row rejected, xz": ("helpsteer2", lambda m, n: _helpsteer_rejected(m, n, lzma.compress, ".xz")),
    "not UTF-8": (
        "helpsteer2",
        lambda m, n: m.mkdir() or (m / "train.jsonl").write_bytes(b"\xfd\xff\xfe\n" * (1 + n % 3)),
    ),
    "empty file": ("hh_rlhf", lambda m, n: m.mkdir() or (m / "train.jsonl").write_bytes(b"")),
    "no files": ("hh_rlhf", lambda m, n: m.mkdir()),
    "unrelated file": ("ultrafeedback_binarized", lambda m, n: m.mkdir() or (m / "README.md").write_text("hello")),
    "missing folder": ("pku_safe_rlhf", lambda m, n: None),
}
UNKNOWN_DATASETS = ["no_such_dataset", "pku_safe_rlhf/nope", "hh_rlhf/helpful"]


@FUZZ
@given(damage=st.sampled_from(list(DATASET_DAMAGE)), n=st.integers(0, 100))
def test_fuzz_dataset_folders(damage, n):
    name, make = DATASET_DAMAGE[damage]
    with workspace() as (inputs, outputs):
        make(inputs / "manual", n)
        argv = ["data", "prepare", name, "--manual-dir", str(inputs / "manual"), "--data-dir", str(outputs / "tfds")]
        assert_one_error_line(argv, inputs, INPUT_STATUS)
        unknown = UNKNOWN_DATASETS[n % len(UNKNOWN_DATASETS)]  # a usage error, whatever the folder holds
        assert_one_error_line(
            ["data", "prepare", unknown, "--manual-dir", str(inputs / "manual")], inputs, CONFIG_STATUS
        )
