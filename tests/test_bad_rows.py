"""Malformed data rows: each gets its clear error (naming source, row and field) or its counted skip."""

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxspo.data.encode import encode_preference_rows
from jaxspo.data.screen import encode_screened
from jaxspo.data.tokenizer import build_task_tokenizer
from jaxspo.errors import DataError
from tests.run_overrides import TINY_MODEL_SMALL_DATA

TOKENIZER = build_task_tokenizer()
MAX_LENGTH = 16


def good_row(i: int) -> dict:
    return {"prompt": "reverse 1 2 3 :", "chosen": "3 2 1", "rejected": f"3 {i % 10} 1 um", "soft_label": 0.9}


def encode(rows):
    return encode_preference_rows(rows, TOKENIZER, MAX_LENGTH)


# each corruption: (name, function row -> bad row, text the error must contain)
CORRUPTIONS = [
    ("missing field", lambda r: {k: v for k, v in r.items() if k != "chosen"}, "missing field 'chosen'"),
    ("wrong type", lambda r: r | {"rejected": 42}, "field 'rejected' must be a str"),
    ("none text", lambda r: r | {"prompt": None}, "field 'prompt' must be a str"),
    ("empty response", lambda r: r | {"chosen": "  "}, "field 'chosen' is empty"),
    ("identical pair", lambda r: r | {"rejected": r["chosen"]}, "identical to field 'chosen'"),
    ("prompt too long", lambda r: r | {"prompt": "reverse " + "1 " * 20 + ":"}, "field 'prompt' takes"),
    ("soft label above 1", lambda r: r | {"soft_label": 1.5}, "field 'soft_label' must be in [0, 1]"),
    ("soft label NaN", lambda r: r | {"soft_label": math.nan}, "field 'soft_label' must be in [0, 1]"),
    ("soft label text", lambda r: r | {"soft_label": "high"}, "field 'soft_label' must be a number"),
    ("undecodable text", lambda r: r | {"chosen": "3 2 \ud800 1"}, "field 'chosen' is not valid text"),
    ("not a mapping", lambda r: ["reverse", "3 2 1"], "expected a dict"),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_rows=st.integers(min_value=2, max_value=12),
    corrupted=st.lists(
        st.tuples(st.integers(min_value=0, max_value=11), st.sampled_from(range(len(CORRUPTIONS)))),
        min_size=1,
        max_size=5,
    ),
)
def test_malformed_rows_are_reported_or_skipped(n_rows, corrupted):
    rows = [good_row(i) for i in range(n_rows)]
    bad = {}
    for index, kind in corrupted:
        index %= n_rows
        rows[index] = CORRUPTIONS[kind][1](good_row(index))
        bad[index] = kind
    first = min(bad)
    with pytest.raises(DataError) as err:
        encode_screened(rows, encode, "pairs.jsonl", "error")
    assert str(err.value).startswith(f"pairs.jsonl, row {first}: ")
    assert CORRUPTIONS[bad[first]][2] in str(err.value)

    if len(bad) == n_rows:
        with pytest.raises(DataError, match="all .* rows are malformed"):
            encode_screened(rows, encode, "pairs.jsonl", "skip")
        return
    arrays, report = encode_screened(rows, encode, "pairs.jsonl", "skip")
    assert report.kept == n_rows - len(bad) == len(arrays["soft_label"])
    assert sum(report.skipped.values()) == len(bad)
    expected = {}
    for kind in bad.values():
        expected[CORRUPTIONS[kind][2]] = expected.get(CORRUPTIONS[kind][2], 0) + 1
    for text, count in expected.items():
        pattern = re.sub(r"\d+", "N", text)  # reasons are counted with numbers masked
        assert sum(c for reason, c in report.skipped.items() if pattern in reason) >= count


def test_clean_rows_pass_untouched():
    rows = [good_row(i) for i in range(5)]
    arrays, report = encode_screened(rows, encode, "pairs.jsonl", "error")
    assert report.kept == 5 and not report.skipped
    assert arrays["chosen_tokens"].shape == (5, MAX_LENGTH)


def _with_bad_train_row(monkeypatch):
    from jaxspo.train import loop
    from jaxspo.train import run as run_module

    real = run_module.build_synthetic_task

    def task_with_bad_row(cfg):
        task = real(cfg)
        task.splits["train"][3]["soft_label"] = 1.5
        task.splits["train"][7]["rejected"] = task.splits["train"][7]["chosen"]
        return task

    monkeypatch.setattr(run_module, "build_synthetic_task", task_with_bad_row)
    return loop


TINY = [
    *TINY_MODEL_SMALL_DATA,
    "trainer.sft_steps=0",
    "trainer.steps=2",
    "trainer.batch_size=8",
    "eval.num_pairs=8",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
]


def test_training_stops_on_a_bad_row_before_any_step(monkeypatch, tmp_path):
    from jaxspo.config import load_config

    loop = _with_bad_train_row(monkeypatch)
    cfg = load_config("configs/demo.yaml", TINY + [f"run_dir={tmp_path}"])
    with pytest.raises(
        DataError,
        match=r"^synthetic:train, row 3: field 'soft_label' must be in \[0, 1\], got 1.5; fix or delete "
        r"the row, or set data.on_bad_row=skip",
    ):
        loop.train(cfg, "bad")
    assert not (tmp_path / "checkpoints" / "preference").exists()


def test_training_skips_and_reports_bad_rows(monkeypatch, tmp_path):
    import json

    from jaxspo.config import load_config

    loop = _with_bad_train_row(monkeypatch)
    cfg = load_config("configs/demo.yaml", TINY + [f"run_dir={tmp_path}", "data.on_bad_row=skip"])
    loop.train(cfg, "bad")
    report = {r["source"]: r for r in json.loads((tmp_path / "data_report.json").read_text())}["synthetic:train"]
    assert report["rows"] == 64 and report["kept"] == 62
    assert sum(report["skipped"].values()) == 2
