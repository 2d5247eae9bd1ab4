"""Each builder's source rules on a tiny fixture written for the rule: drops counted by reason, multi-turn
prompts as messages, the publication layouts found (side files: test_tfds_side_files.py)."""

import gzip
import json

import pytest

from jaxspo.data.prepare import prepare
from jaxspo.data.sources import SourceConfig, read_split


def write_jsonl(path, rows, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if compress else data)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def hh(*turns):
    return "".join(f"\n\n{speaker}: {text}" for speaker, text in turns)


def conv(user, answer):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def pku(r0, r1, better=0, safer=0, safe0=True, safe1=False):
    return {
        "prompt": "Q?",
        "response_0": r0,
        "response_1": r1,
        "better_response_id": better,
        "safer_response_id": safer,
        "is_response_0_safe": safe0,
        "is_response_1_safe": safe1,
    }


def tldr(a, b, choice=0, split="train", post="A post."):
    info = (
        {"id": "t3_x", "post": post, "title": "T", "subreddit": "s"}
        if post
        else {"id": "cnn", "article": "News.", "site": "cnn"}
    )
    return {"info": info, "summaries": [{"text": a}, {"text": b}], "choice": choice, "split": split}


def rated(prompt, response, helpfulness):
    return {
        "prompt": prompt,
        "response": response,
        "helpfulness": helpfulness,
        "correctness": 2,
        "coherence": 2,
        "complexity": 1,
        "verbosity": 1,
    }


def preferred(strength, r1="One.", r2="Two.", split="train"):
    return {"prompt": "Pick.", "response_1": r1, "response_2": r2, "preference_strength": strength, "split": split}


# name, file below the manual dir, rows (the first is the one good train pair), {reason: count} of the train split
RULES = {
    "hh_rlhf": (
        "helpful-base/train.jsonl.gz",
        [
            {
                "chosen": hh(("Human", "Hi"), ("Assistant", "Hello.")),
                "rejected": hh(("Human", "Hi"), ("Assistant", "Go away.")),
            },
            {
                "chosen": hh(("Human", "Hi"), ("Assistant", "Same.")),
                "rejected": hh(("Human", "Hi"), ("Assistant", "Same. ")),
            },
            {
                "chosen": hh(("Human", "Hi"), ("Assistant", "Yes.")),
                "rejected": hh(("Human", "Hi"), ("Assistant", "   ")),
            },
            {"chosen": hh(("Human", "Hi"), ("Assistant", "A")), "rejected": hh(("Human", "Bye"), ("Assistant", "B"))},
            {
                "chosen": hh(("Human", "Hi"), ("Assistant", "A"), ("Human", "More?")),
                "rejected": hh(("Human", "Hi"), ("Assistant", "B"), ("Human", "More?")),
            },
            {"chosen": "Human: no leading blank line", "rejected": hh(("Human", "x"), ("Assistant", "y"))},
        ],
        {
            "tie: chosen and rejected are identical": 1,
            "invalid: empty or whitespace-only response": 1,
            "invalid: chosen and rejected differ before the last Assistant turn": 1,
            "invalid: a transcript does not end with an Assistant turn": 1,
            "invalid: not a '\\n\\nHuman: … \\n\\nAssistant: …' transcript": 1,
        },
    ),
    "ultrafeedback_binarized": (
        "data/train_prefs-00000-of-00001.parquet",
        [
            {
                "chosen": conv("Q", "good"),
                "rejected": conv("Q", "bad"),
                "score_chosen": 8.0,
                "score_rejected": 3.0,
                "prompt_id": "p",
            },
            {
                "chosen": conv("Q", "a"),
                "rejected": conv("Q", "b"),
                "score_chosen": 5.0,
                "score_rejected": 5.0,
                "prompt_id": "p",
            },
            {
                "chosen": conv("Q", "a"),
                "rejected": conv("Q", "b"),
                "score_chosen": 4.0,
                "score_rejected": 6.0,
                "prompt_id": "p",
            },
            {
                "chosen": conv("Q", "same"),
                "rejected": conv("Q", "same"),
                "score_chosen": 9.0,
                "score_rejected": 2.0,
                "prompt_id": "p",
            },
            {
                "chosen": conv("Q", "a"),
                "rejected": conv("Q", " \n"),
                "score_chosen": 9.0,
                "score_rejected": 2.0,
                "prompt_id": "p",
            },
        ],
        {
            "tie: score_chosen equals score_rejected": 1,
            "contradictory: score_chosen is below score_rejected": 1,
            "tie: chosen and rejected are identical": 1,
            "invalid: empty or whitespace-only response": 1,
        },
    ),
    "pku_safe_rlhf/better": (
        "data/Alpaca-7B/train.jsonl",
        [
            pku("Safe answer.", "Harmful answer."),
            pku("Safe answer.", "Harmful answer.", safer=1),  # names the unsafe response as the safer one
            pku("Same.", "Same."),
            pku("", "Something."),
            pku("A.", "B.", better=2),
        ],
        {
            "contradictory: safer_response_id names the unsafe response of a safe/unsafe pair": 1,
            "tie: chosen and rejected are identical": 1,
            "invalid: empty or whitespace-only response": 1,
            "invalid: better_response_id is not 0 or 1": 1,
        },
    ),
    "tldr_comparisons": (
        "comparisons/batch3.json",
        [
            tldr(" good summary", " bad"),
            tldr(" same", " same"),
            tldr(" fine", "   "),
            tldr(" news", " article", post=None),
            tldr(" a", " b", choice=2),
            tldr(" held", " out", split="valid2"),
        ],
        {
            "tie: chosen and rejected are identical": 1,
            "invalid: empty or whitespace-only response": 1,
            "invalid: a CNN/DM article comparison, not a TL;DR post": 1,
            "invalid: choice is not 0 or 1 between two summaries": 1,
        },
    ),
    "helpsteer2/ratings": (
        "train.jsonl.gz",
        [
            rated("P1", "Better.", 4),
            rated("P1", "Worse.", 1),
            rated("P2", "A.", 3),
            rated("P2", "B.", 3),
            rated("P3", "Same.", 4),
            rated("P3", "Same.", 2),
            rated("P4", " ", 4),
            rated("P4", "Text.", 2),
            rated("P5", "Alone.", 2),
        ],
        {
            "tie: equal helpfulness": 1,
            "tie: chosen and rejected are identical": 1,
            "invalid: empty or whitespace-only response": 1,
            "invalid: a response without a second response to the same prompt": 1,
        },
    ),
    "helpsteer2/preference": (
        "preference/preference.jsonl.gz",
        [
            preferred(-2, r1="Chosen.", r2="Rejected."),
            preferred(0),
            preferred(3, r1="Dup.", r2="Dup."),
            preferred(1, split="validation"),
        ],
        {"tie: preference_strength is 0": 1, "tie: chosen and rejected are identical": 1},
    ),
}


def build(name, manual, tmp_path):
    return prepare(name, str(manual), str(tmp_path / "tfds"))


def put(manual, relative, rows):
    path = manual / relative
    if path.suffix == ".parquet":
        write_parquet(path, rows)
    else:
        write_jsonl(path, rows, compress=path.suffix == ".gz")


@pytest.mark.parametrize("name", list(RULES))
def test_rows_the_source_rules_out_are_dropped_and_counted_by_reason(name, tmp_path):
    relative, rows, reasons = RULES[name]
    put(tmp_path / "manual", relative, rows)
    train = next(
        s for split, s in build(name, tmp_path / "manual", tmp_path)["splits"].items() if split.startswith("train")
    )
    assert train["rows"] == 1
    assert train["rejected"] == reasons


def test_the_summary_prints_each_drop_reason(tmp_path, capsys):
    from jaxspo.cli import main

    relative, rows, _ = RULES["ultrafeedback_binarized"]
    put(tmp_path / "manual", relative, rows)
    assert (
        main(
            [
                "data",
                "prepare",
                "ultrafeedback_binarized",
                "--manual-dir",
                str(tmp_path / "manual"),
                "--data-dir",
                str(tmp_path / "tfds"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| train_prefs | 1 |" in out and "| 4 |" in out
    assert "train_prefs: 1 × contradictory: score_chosen is below score_rejected" in out


def test_helpsteer2_preference_keeps_the_preferred_response_and_its_strength(tmp_path):
    put(tmp_path / "manual", *RULES["helpsteer2/preference"][:2])
    build("helpsteer2/preference", tmp_path / "manual", tmp_path)
    _, rows = read_split(SourceConfig(kind="tfds", name="helpsteer2/preference", path=str(tmp_path / "tfds")), "train")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"], r["preference_strength"]) for r in rows] == [
        ("Chosen.", "Rejected.", 2.0)
    ]


def test_multi_turn_prompts_become_messages(tmp_path):
    manual = tmp_path / "manual"
    turns = [("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "A colour?")]
    put(
        manual / "hh",
        "helpful-base/train.jsonl",
        [{"chosen": hh(*turns, ("Assistant", "Blue.")), "rejected": hh(*turns, ("Assistant", "No."))}],
    )
    prompt = "Write a poem.\n<extra_id_1>Assistant\nRoses are red.\n<extra_id_1>User\nShorter."
    put(manual / "hs2", "train.jsonl", [rated(prompt, "Red.", 4), rated(prompt, "Roses are red, violets are blue.", 1)])
    build("hh_rlhf", manual / "hh", tmp_path)
    build("helpsteer2", manual / "hs2", tmp_path)
    read = lambda name: read_split(SourceConfig(kind="tfds", name=name, path=str(tmp_path / "tfds")), "train")[1][0]  # noqa: E731
    hh_row, hs2_row = read("hh_rlhf"), read("helpsteer2")
    assert hh_row["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "A colour?"},
    ]
    assert hh_row["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert hs2_row["prompt"] == [
        {"role": "user", "content": "Write a poem."},
        {"role": "assistant", "content": "Roses are red."},
        {"role": "user", "content": "Shorter."},
    ]
    assert hs2_row["chosen"] == [{"role": "assistant", "content": "Red."}]


GOOD_HH = [
    {"chosen": hh(("Human", "Q"), ("Assistant", "Good.")), "rejected": hh(("Human", "Q"), ("Assistant", "Bad."))}
]


def test_a_whole_repository_download_is_read_below_its_root_without_its_side_and_cache_files(tmp_path):
    repo = tmp_path / "manual" / "hh-rlhf"
    put(repo, "helpful-base/train.jsonl.gz", GOOD_HH)
    put(repo, "harmless-base/train.jsonl.gz", GOOD_HH)
    put(
        repo,
        "red-team-attempts/red_team_attempts.jsonl.gz",
        [{"transcript": hh(("Human", "x"), ("Assistant", "y")), "rating": 1}],
    )
    (repo / ".cache/huggingface/download/helpful-base").mkdir(parents=True)
    (repo / ".cache/huggingface/download/helpful-base/train.jsonl.gz.metadata").write_text("sha\n")
    summary = build("hh_rlhf", tmp_path / "manual", tmp_path)
    assert summary["splits"]["train"]["rows"] == 2 and not summary["splits"]["train"]["rejected"]


@pytest.mark.parametrize(
    "layout",
    [
        ("data/train-00000-of-00001.parquet",),  # the hub's Parquet files
        (
            "all/train/0000.parquet",
            "helpful-base/train/0000.parquet",
        ),  # refs/convert/parquet: the 'all' config and a subset config repeating it
    ],
)
def test_hub_parquet_layouts_are_found_and_read_once(layout, tmp_path):
    for relative in layout:
        put(tmp_path / "manual", relative, GOOD_HH)
    summary = build("hh_rlhf", tmp_path / "manual", tmp_path)
    assert summary["splits"]["train"]["rows"] == 1


def test_parquet_conversion_of_a_single_config_dataset(tmp_path):
    put(tmp_path / "manual", "default/train_prefs/0000.parquet", RULES["ultrafeedback_binarized"][1][:1])
    assert build("ultrafeedback_binarized", tmp_path / "manual", tmp_path)["splits"]["train_prefs"]["rows"] == 1
