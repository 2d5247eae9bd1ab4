"""`jaxspo eval`'s win rate (the command itself runs in tests/test_walkthrough.py on a trained run)."""

import numpy as np
import pytest

from jaxspo.reward_model import win_rate


def test_win_rate_counts_ties_as_half():
    assert win_rate(np.array([1.0, 0.0, 2.0, 3.0]), np.array([0.0, 0.0, 5.0, 1.0])) == pytest.approx(0.625)
