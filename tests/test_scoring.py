"""Chunked scoring: trimming each chunk to the width its longest row needs changes no row's log-probs."""

import numpy as np

from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.data.bucketing import example_lengths
from jaxspo.train.scoring import PairScorer, SequenceScorer, score_in_chunks, trim_widths
from jaxspo.train.state import abstract_model, init_params, param_shardings
from tests.test_train_step import TINY, random_pairs


def test_used_widths_reach_the_last_valid_slot_and_trim_widths_cover_the_full_width():
    valid = np.array([[1, 1, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], bool)  # row 1: a gap, row 2: empty
    other = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    assert example_lengths(
        {"chosen_valid": valid, "rejected_valid": other, "chosen_tokens": np.ones((3, 6))}
    ).tolist() == [3, 4, 0]
    assert trim_widths(128) == [32, 64, 96, 128] and trim_widths(48) == [16, 24, 40, 48] and trim_widths(5) == [5]


def test_trimmed_chunks_give_each_row_its_untrimmed_logps():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, abstract = abstract_model(TINY)
    params = init_params(TINY, 0, param_shardings(abstract, mesh, DEFAULT_RULES))
    arrays = random_pairs(21, length=48, seed=3)  # 21 rows: the last chunk of 8 is filled up
    arrays["chosen_valid"][5, :] = True  # one row of the full width (pad tokens past its response)
    lengths = example_lengths(arrays)
    assert lengths.max() == 48 and lengths.min() <= 16  # chunks of several widths
    pairs = PairScorer(graphdef, mesh, DEFAULT_RULES, 8)
    fields = {
        k: arrays[k]
        for k in (
            "chosen_tokens",
            "chosen_valid",
            "chosen_loss_mask",
            "rejected_tokens",
            "rejected_valid",
            "rejected_loss_mask",
            "soft_label",
        )
    }
    whole = score_in_chunks(pairs._fn, params, fields, 8, mesh, DEFAULT_RULES)
    trimmed = pairs(params, arrays)
    for a, b in zip(trimmed, whole, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-6)
    assert np.abs(whole[0] - whole[1]).max() > 1.0  # chosen and rejected differ: rows are not mixed up
    sequences = SequenceScorer(graphdef, mesh, DEFAULT_RULES, 8)
    logps, counts = sequences.sums(params, arrays["chosen_tokens"], arrays["chosen_valid"], arrays["chosen_loss_mask"])
    np.testing.assert_allclose(logps, whole[0], atol=1e-5, rtol=1e-6)
    np.testing.assert_array_equal(counts, arrays["chosen_loss_mask"].sum(axis=1))
