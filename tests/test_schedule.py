from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learner.schedule import sft_learning_rate


def test_warmup_stable_decay_by_hand():
    # 10 steps, 2 of warmup, the last 40 % (4 steps) decaying: x peak 0.5 1 1 1 1 1 1 0.75 0.5 0.25
    rates = [sft_learning_rate(s, 10, 2.0, warmup_steps=2, decay_fraction=0.4) for s in range(10)]
    assert rates == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5])


def test_constant_without_warmup_or_decay():
    assert {sft_learning_rate(s, 7, 3e-4, 0, 0.0) for s in range(7)} == {3e-4}


def test_out_of_range_step_is_refused():
    with pytest.raises(ValueError, match="outside"):
        sft_learning_rate(5, 5, 1.0, 0, 0.0)


@given(total=st.integers(1, 300), warmup=st.integers(0, 50), fraction=st.floats(0.0, 1.0))
def test_never_above_peak_never_zero_and_never_rising_while_decaying(total, warmup, fraction):
    rates = [sft_learning_rate(s, total, 1.0, warmup, fraction) for s in range(total)]
    assert all(0.0 < r <= 1.0 for r in rates)
    decay_start = total - round(total * fraction)
    tail = rates[max(decay_start, warmup) :]
    assert all(a >= b for a, b in pairwise(tail))
