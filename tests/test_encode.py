"""Row encoding (layout, masks, truncation, validation), prompt encoding, decoding, tokenizer I/O."""

import numpy as np
import pytest

from jaxspo.data.encode import (
    decode_responses,
    encode_preference_rows,
    encode_prompts,
    encode_sft_rows,
)
from jaxspo.data.tokenizer import TASK_VOCAB, build_task_tokenizer

BOS, EOS, PAD, UNK, REVERSE, COLON, UM = 1, 2, 0, 3, 4, 5, 16


def d(digit: int) -> int:
    """Id of a digit word."""
    return 6 + digit


PROMPT_IDS = [BOS, REVERSE, d(3), d(1), d(4), COLON]  # "reverse 3 1 4 :" with BOS
ROW = {"prompt": "reverse 3 1 4 :", "chosen": "4 1 3", "rejected": "um 4", "soft_label": 0.7}
MISSING = object()


@pytest.fixture(scope="module")
def tokenizer():
    return build_task_tokenizer()


def test_task_vocabulary_ids(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(w) for w in ("<pad>", "<bos>", "<eos>", "<unk>")] == [PAD, BOS, EOS, UNK]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD, BOS, EOS)
    assert tokenizer.convert_tokens_to_ids(["reverse", ":", "0", "9", "um"]) == [REVERSE, COLON, d(0), d(9), UM]
    assert tokenizer("reverse 3 12 hello :")["input_ids"] == [BOS, REVERSE, d(3), UNK, UNK, COLON]
    assert tokenizer.decode([REVERSE, d(3), UM, COLON]) == "reverse 3 um :"
    assert len(tokenizer) == len(TASK_VOCAB)


def test_preference_layout_and_masks(tokenizer):
    out = encode_preference_rows([ROW, {k: v for k, v in ROW.items() if k != "soft_label"}], tokenizer, 12)
    chosen = PROMPT_IDS + [d(4), d(1), d(3), EOS, PAD, PAD]
    rejected = PROMPT_IDS + [UM, d(4), EOS, PAD, PAD, PAD]
    np.testing.assert_array_equal(out["chosen_tokens"], [chosen, chosen])
    np.testing.assert_array_equal(out["rejected_tokens"], [rejected, rejected])
    np.testing.assert_array_equal(out["chosen_loss_mask"][0], [0] * 6 + [1] * 4 + [0] * 2)
    np.testing.assert_array_equal(out["rejected_loss_mask"][0], [0] * 6 + [1] * 3 + [0] * 3)
    np.testing.assert_array_equal(out["chosen_valid"][0], [1] * 10 + [0] * 2)
    np.testing.assert_array_equal(out["rejected_valid"][0], [1] * 9 + [0] * 3)
    np.testing.assert_allclose(out["soft_label"], [0.7, 1.0])
    assert out["soft_label"].dtype == np.float32 and out["chosen_tokens"].dtype == np.int32
    assert out["chosen_loss_mask"].dtype == bool and out["chosen_valid"].dtype == bool
    for side in ("chosen", "rejected"):
        tokens = out[f"{side}_tokens"]
        assert np.all((tokens == BOS).sum(1) == 1) and np.all((tokens == EOS).sum(1) == 1)
        assert not out[f"{side}_loss_mask"][:, 0].any()


def test_sft_layout_masks_completion_and_eos(tokenizer):
    out = encode_sft_rows([{"prompt": "reverse 3 1 4 :", "completion": "4 so 3"}], tokenizer, 11)
    np.testing.assert_array_equal(out["tokens"][0], PROMPT_IDS + [d(4), 18, d(3), EOS, PAD])
    np.testing.assert_array_equal(out["loss_mask"][0], [0] * 6 + [1] * 4 + [0])
    np.testing.assert_array_equal(out["valid"][0], [1] * 10 + [0])
    assert set(out) == {"tokens", "loss_mask", "valid"}


@pytest.mark.parametrize(
    ("max_length", "response", "has_eos"),
    [
        (10, [d(4), d(1), d(3)], True),  # exactly fits with EOS
        (9, [d(4), d(1), d(3)], False),  # no room for EOS: dropped
        (8, [d(4), d(1)], False),  # response cut from the right
        (7, [d(4)], False),  # one response token is the minimum
    ],
)
def test_truncation_cuts_the_response_and_drops_eos(tokenizer, max_length, response, has_eos):
    out = encode_preference_rows([ROW], tokenizer, max_length)
    expected = PROMPT_IDS + response + [EOS] * has_eos
    np.testing.assert_array_equal(out["chosen_tokens"][0], expected + [PAD] * (max_length - len(expected)))
    assert out["chosen_loss_mask"][0].sum() == len(response) + has_eos
    assert out["chosen_tokens"].shape == (1, max_length)


def test_prompt_without_room_for_a_response_names_the_row(tokenizer):
    with pytest.raises(ValueError, match=r"row 1: field 'prompt'"):
        encode_preference_rows([{**ROW, "prompt": "reverse 1 :"}, ROW], tokenizer, 6)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"chosen": MISSING}, "chosen"),
        ({"prompt": 123}, "prompt"),
        ({"rejected": ""}, "rejected"),
        ({"chosen": "   "}, "chosen"),
        ({"rejected": "4 1 3"}, "rejected"),  # identical to chosen
        ({"soft_label": 1.5}, "soft_label"),
        ({"soft_label": -0.1}, "soft_label"),
        ({"soft_label": float("nan")}, "soft_label"),
        ({"soft_label": "0.5"}, "soft_label"),
        ({"soft_label": True}, "soft_label"),
    ],
)
def test_bad_preference_rows_name_row_index_and_field(tokenizer, change, field):
    bad = {key: value for key, value in {**ROW, **change}.items() if value is not MISSING}
    with pytest.raises(ValueError, match=rf"row 2: .*'{field}'"):
        encode_preference_rows([ROW, ROW, bad], tokenizer, 16)


def test_non_dict_row_and_bad_sft_row_name_the_row(tokenizer):
    with pytest.raises(ValueError, match="row 1: expected a dict"):
        encode_preference_rows([ROW, ["reverse 1 :", "1", "2"]], tokenizer, 16)
    with pytest.raises(ValueError, match="row 0: missing field 'completion'"):
        encode_sft_rows([{"prompt": "reverse 1 :"}], tokenizer, 16)
    with pytest.raises(ValueError, match="empty"):
        encode_sft_rows([], tokenizer, 16)


def test_prompts_are_left_padded_with_bos(tokenizer):
    tokens, valid = encode_prompts(["reverse 3 1 4 :", "reverse 2 :"], tokenizer, 8)
    np.testing.assert_array_equal(tokens, [[PAD, PAD] + PROMPT_IDS, [PAD] * 4 + [BOS, REVERSE, d(2), COLON]])
    np.testing.assert_array_equal(valid, [[0, 0] + [1] * 6, [0] * 4 + [1] * 4])
    assert tokens.dtype == np.int32 and valid.dtype == bool
    with pytest.raises(ValueError, match="prompt 1: 6 tokens"):
        encode_prompts(["reverse 2 :", "reverse 3 1 4 :"], tokenizer, 5)


def test_decode_responses_stops_at_eos_and_drops_special_tokens(tokenizer):
    tokens = np.array([[d(4), UM, d(1), EOS, d(7), PAD], [BOS, d(2), UNK, PAD, PAD, PAD], [d(5), d(6), d(7), 0, 0, 0]])
    valid = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=bool)
    assert decode_responses(tokens, valid, tokenizer) == ["4 um 1", "2 <unk>", "5 6"]


def test_encode_then_decode_recovers_the_response(tokenizer):
    out = encode_preference_rows([ROW], tokenizer, 16)
    assert decode_responses(out["chosen_tokens"], out["chosen_loss_mask"], tokenizer) == [ROW["chosen"]]
