"""Fuzz of the command line: bad configs, data files, model folders, run directories and dataset folders go
through every subcommand's entry point (``jaxspo.cli.main``, in-process). Each must end in exactly one error
line ``jaxspo: <kind> error: …`` with its documented exit status (2 config / usage, 1 any other input), no
traceback, and no input file changed."""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import re
import shutil
import tempfile
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jaxspo import cli
from jaxspo.config import Config

ERROR_LINE = re.compile(r"^jaxspo: [a-z ]*error: \S")
CONFIG_STATUS, INPUT_STATUS = 2, 1
FIXTURES = Path(__file__).parent / "fixtures"
# no shrinking: every example runs real loading code, and the first failure's inputs are printed as they are
FUZZ = settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=[Phase.generate],
)

# a tiny preference run (no SFT, 2 steps) on 8 CPU devices; the architecture keys are left to model.path cases
TINY_RUN = [
    "data.synthetic.num_sft=16",
    "data.synthetic.num_train=16",
    "data.synthetic.num_eval=8",
    "trainer.sft_steps=0",
    "trainer.steps=2",
    "trainer.batch_size=8",
    "eval.num_pairs=8",
    "eval.num_prompts=8",
    "eval.max_new_tokens=2",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
    "checkpoint.save_final=false",
]
TINY_MODEL = [
    "model.hidden_size=16",
    "model.intermediate_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.num_kv_heads=1",
]


def run_cli(argv: list[str]) -> tuple[object, str]:
    """(exit status or the uncaught exception, stderr) of ``jaxspo ARGV`` run in this process."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as exit_:  # argparse's own exit
            status = exit_.code
        except Exception as err:  # noqa: BLE001 - the property under test: nothing escapes main
            status = err
    return status, stderr.getvalue()


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_error_line(
    argv: list[str], inputs: Path, status: int, if_it_succeeds: typing.Callable[[], None] | None = None
) -> str | None:
    """Runs ``argv`` and checks the error contract; returns the error line. With ``if_it_succeeds`` the command
    may also succeed (status 0, no error line, inputs unchanged), and then that check must hold; returns None."""
    before = hashes(inputs)
    got, stderr = run_cli(argv)
    if got == 0 and if_it_succeeds is not None:
        assert hashes(inputs) == before, f"an input file changed\nargv={argv}"
        if_it_succeeds()
        return None
    assert not isinstance(got, BaseException), f"uncaught {type(got).__name__}: {got}\nargv={argv}"
    assert "Traceback" not in stderr, f"traceback for a user error\nargv={argv}\n{stderr[-3000:]}"
    lines = [line for line in stderr.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, f"expected one error line, got {lines}\nargv={argv}\n{stderr[-3000:]}"
    assert got == status, f"status {got}, expected {status}: {lines[0]}\nargv={argv}"
    assert hashes(inputs) == before, f"an input file changed\nargv={argv}"
    return lines[0]


@contextlib.contextmanager
def workspace():
    """(inputs, outputs) folders of one example."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "inputs", Path(tmp) / "outputs"
        inputs.mkdir()
        outputs.mkdir()
        yield inputs, outputs


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


def good_row(i: int) -> dict:
    return {"prompt": f"reverse {i % 10} 2 3 :", "chosen": f"3 2 {i % 10}", "rejected": f"3 {i % 10} um"}


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
