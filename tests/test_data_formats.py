"""Preference formats, chat-template tokenisation (golden ids), prompt truncation and file sources."""

import numpy as np
import pytest

from jaxspo.data import write_jsonl
from jaxspo.data.encode import encode_preference_rows, encode_prompts, encode_sft_rows
from jaxspo.data.formats import prompts_of, sft_rows_from_pairs, to_preference_row
from jaxspo.data.screen import encode_screened
from jaxspo.data.sources import SourceConfig, load_splits, read_split
from jaxspo.data.tokenizer import build_task_tokenizer
from jaxspo.errors import DataError

PAD, BOS, EOS = 0, 1, 2
COLON, REVERSE = 5, 4
D = {str(d): 6 + d for d in range(10)}  # digit ids
UM = 16
USER, ASSISTANT = 20, 21
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def chat_tokenizer(template=TEMPLATE):
    tokenizer = build_task_tokenizer()
    tokenizer.add_tokens(["user", "assistant", "system"])
    tokenizer.chat_template = template
    return tokenizer


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CONVERSATION = {"prompt": [user("reverse 1 2 :")], "chosen": [assistant("2 1")], "rejected": [assistant("um 2")]}


def test_golden_conversation_ids_masks_and_boundary():
    tokenizer = chat_tokenizer()
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("user", "assistant")] == [USER, ASSISTANT]
    out = encode_preference_rows([CONVERSATION], tokenizer, 16)
    context = [BOS, USER, COLON, REVERSE, D["1"], D["2"], COLON, EOS, ASSISTANT, COLON]  # one BOS, template's EOS
    chosen = context + [D["2"], D["1"], EOS]  # the template closed the turn: no second EOS
    rejected = context + [UM, D["2"], EOS]
    np.testing.assert_array_equal(out["chosen_tokens"][0], chosen + [PAD] * 3)
    np.testing.assert_array_equal(out["rejected_tokens"][0], rejected + [PAD] * 3)
    np.testing.assert_array_equal(out["chosen_loss_mask"][0], [False] * 10 + [True] * 3 + [False] * 3)
    np.testing.assert_array_equal(out["chosen_valid"][0], [True] * 13 + [False] * 3)
    assert (out["chosen_tokens"][0] == BOS).sum() == 1 and (out["chosen_tokens"][0] == EOS).sum() == 2  # turn ends only
    # implicit prompt (TRL conversational without "prompt") gives the same arrays
    implicit = {
        "chosen": CONVERSATION["prompt"] + CONVERSATION["chosen"],
        "rejected": CONVERSATION["prompt"] + CONVERSATION["rejected"],
    }
    for key, value in encode_preference_rows([implicit], tokenizer, 16).items():
        np.testing.assert_array_equal(value, out[key], err_msg=key)


def test_standard_text_rows_have_one_bos_and_one_eos():
    out = encode_preference_rows(
        [{"prompt": "reverse 1 2 :", "chosen": "2 1", "rejected": "um 2"}], chat_tokenizer(), 12
    )
    np.testing.assert_array_equal(
        out["chosen_tokens"][0], [BOS, REVERSE, D["1"], D["2"], COLON, D["2"], D["1"], EOS] + [PAD] * 4
    )
    np.testing.assert_array_equal(out["chosen_loss_mask"][0], [False] * 5 + [True] * 3 + [False] * 4)


def test_boundary_check_rejects_a_template_that_rewrites_the_prompt():
    template = (
        "{% for m in messages %}{% if loop.last %}um {% endif %}{{ m['content'] }} {% endfor %}"  # marks the last turn
    )
    with pytest.raises(ValueError, match=r"row 0: field 'chosen': the chat template's prompt .* is not a prefix"):
        encode_preference_rows([CONVERSATION], chat_tokenizer(template), 16)
    with pytest.raises(ValueError, match="row 0: field 'prompt'.*needs a tokenizer with a chat_template|chat_template"):
        encode_preference_rows([CONVERSATION], build_task_tokenizer(), 16)


def test_prompt_budget_keeps_bos_and_the_end_of_the_prompt():
    row = {"prompt": "reverse 1 2 3 4 5 6 :", "chosen": "6 5 4 3 2 1", "rejected": "6 5"}
    out = encode_preference_rows([row], build_task_tokenizer(), 12, max_prompt_length=5)
    # prompt budget 5: <bos> + last 4 prompt tokens; the completion (6 + eos) is then cut from the right at 12
    np.testing.assert_array_equal(
        out["chosen_tokens"][0], [BOS, D["4"], D["5"], D["6"], COLON] + [D[c] for c in "654321"] + [EOS]
    )
    out = encode_preference_rows([row], build_task_tokenizer(), 10, max_prompt_length=5)
    np.testing.assert_array_equal(
        out["chosen_tokens"][0], [BOS, D["4"], D["5"], D["6"], COLON] + [D[c] for c in "65432"]
    )  # no EOS
    assert out["chosen_loss_mask"][0].sum() == 5
    with pytest.raises(ValueError, match="row 0: field 'prompt' takes 9 tokens"):
        encode_preference_rows([row], build_task_tokenizer(), 9)  # no prompt budget: an error as before
    tokens, valid = encode_prompts([row["prompt"], [user("reverse 1 :")]], chat_tokenizer(), 6, keep_end=True)
    np.testing.assert_array_equal(
        tokens, [[BOS, D["3"], D["4"], D["5"], D["6"], COLON], [BOS, D["1"], COLON, EOS, ASSISTANT, COLON]]
    )
    assert valid.all()


def test_formats_ranked_lists_and_errors():
    ranked = {"prompt": "reverse 1 2 :", "responses": ["2 1", "um", "2"], "response_scores": [1.0, 0.0, 0.5]}
    assert to_preference_row(ranked, 0) | {} == ranked | {"chosen": "2 1", "rejected": "um"}
    with pytest.raises(ValueError, match="row 4: field 'response_scores': all responses score 1"):
        to_preference_row(ranked | {"response_scores": [1, 1, 1]}, 4)
    with pytest.raises(ValueError, match="row 2: field 'chosen' and field 'rejected' share no leading message"):
        to_preference_row({"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]}, 2)
    with pytest.raises(ValueError, match=r"row 1: field 'chosen'\[0\]: role must be one of"):
        to_preference_row({"chosen": [{"role": "bot", "content": "x"}], "rejected": [user("y")]}, 1)
    with pytest.raises(ValueError, match="row 0: field 'completion': prompt and completion must both be text"):
        encode_sft_rows([{"prompt": "reverse 1 :", "completion": [assistant("1")]}], chat_tokenizer(), 16)
    sft = sft_rows_from_pairs([CONVERSATION, {"prompt": "x"}])
    assert sft == [{"prompt": CONVERSATION["prompt"], "completion": CONVERSATION["chosen"]}]
    out = encode_sft_rows(sft, chat_tokenizer(), 16)
    assert out["loss_mask"][0].sum() == 3
    assert prompts_of([CONVERSATION, 5]) == [CONVERSATION["prompt"]]


ROWS = [
    {"question": "reverse 1 2 :", "good": "2 1", "bad": "um 2", "p": 0.8},
    {"question": "reverse 3 4 5 :", "good": "5 4 3", "bad": "5 4", "p": 0.9},
]
FIELDS = {"prompt": "question", "chosen": "good", "rejected": "bad", "soft_label": "p"}


def _write(kind, rows, folder):
    if kind == "jsonl":
        for split in ("train", "test"):
            write_jsonl(rows, folder / f"{split}.jsonl")
        return str(folder / "{split}.jsonl")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        for split in ("train", "test"):
            pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}.parquet")
        return str(folder / "{split}.parquet")
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s in ("train", "test")}).save_to_disk(
        str(folder / "hf")
    )
    return str(folder / "hf")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf_disk"])
def test_file_sources_read_rename_and_report_bad_rows_by_file(kind, tmp_path):
    path = _write(kind, ROWS, tmp_path)
    source = SourceConfig(kind=kind, path=path, fields=FIELDS)
    source.validate()
    splits = load_splits(source, task=None)
    assert [r["chosen"] for r in splits.rows["train"]] == ["2 1", "5 4 3"]
    assert splits.rows["sft"] == [
        {"prompt": "reverse 1 2 :", "completion": "2 1"},
        {"prompt": "reverse 3 4 5 :", "completion": "5 4 3"},
    ]
    tokenizer = build_task_tokenizer()
    arrays, _ = encode_screened(
        splits.rows["train"], lambda r: encode_preference_rows(r, tokenizer, 16), splits.names["train"], "error"
    )
    np.testing.assert_allclose(arrays["soft_label"], [0.8, 0.9])
    bad = tmp_path / "bad"
    bad.mkdir()
    name, rows = read_split(
        SourceConfig(kind=kind, path=_write(kind, ROWS + [ROWS[0] | {"p": 1.5}], bad), fields=FIELDS), "train"
    )
    with pytest.raises(
        DataError, match=rf"^{name}, row 2: field 'soft_label' must be in \[0, 1\], got 1.5; fix or delete the row"
    ):
        encode_screened(rows, lambda r: encode_preference_rows(r, tokenizer, 16), name, "error")
    assert "train" in name


def test_source_config_errors_name_the_key():
    for cfg, text in [
        (SourceConfig(kind="csv"), "data.source.kind must be one of"),
        (SourceConfig(kind="jsonl"), "data.source.path is required"),
        (SourceConfig(kind="jsonl", path="a.jsonl"), "must contain '{split}'"),
        (SourceConfig(kind="tfds"), "data.source.name is required"),
    ]:
        with pytest.raises(ValueError, match=text):
            cfg.validate()
