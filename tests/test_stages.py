from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from curriculum.stages import batch_indices


def test_plain_batches_cover_every_problem_once_per_epoch():
    epoch_one = [i for step in range(2) for i in batch_indices(10, 5, step, seed=0, stage=1)]
    epoch_two = [i for step in range(2, 4) for i in batch_indices(10, 5, step, seed=0, stage=1)]
    assert sorted(epoch_one) == sorted(epoch_two) == list(range(10))
    assert epoch_one != epoch_two  # each epoch is its own shuffle


def test_length_groups_by_hand():
    # 8 problems whose length is their index; windows of 2 batches of 2 = 4 problems.
    lengths = list(range(8))
    plain = [batch_indices(8, 2, step, seed=3, stage=1) for step in range(4)]
    grouped = [batch_indices(8, 2, step, seed=3, stage=1, lengths=lengths, length_groups=2) for step in range(4)]
    for window in range(2):
        drawn = sorted(plain[2 * window] + plain[2 * window + 1])
        # the same four problems, split into the two shorter and the two longer ones
        assert sorted([sorted(b) for b in grouped[2 * window : 2 * window + 2]]) == [drawn[:2], drawn[2:]]


@given(
    lengths=st.lists(st.integers(1, 500), min_size=1, max_size=60),
    batch_size=st.integers(1, 8),
    groups=st.integers(1, 5),
    seed=st.integers(0, 3),
)
def test_length_groups_keep_the_draws_and_pad_no_more(lengths, batch_size, groups, seed):
    steps = 3 * groups
    plain = [batch_indices(len(lengths), batch_size, s, seed, 1) for s in range(steps)]
    grouped = [batch_indices(len(lengths), batch_size, s, seed, 1, lengths, groups) for s in range(steps)]
    assert grouped == [batch_indices(len(lengths), batch_size, s, seed, 1, lengths, groups) for s in range(steps)]
    # every window of `groups` steps draws exactly the problems it draws without grouping ...
    for start in range(0, steps, groups):
        assert Counter(sum(plain[start : start + groups], [])) == Counter(sum(grouped[start : start + groups], []))

    # ... and pads no more: sorted, contiguous batches minimise the summed longest length
    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped) <= padded(plain)
