import pytest
from hypothesis import given
from hypothesis import strategies as st

from curriculum.answers import count_steps, count_words, extract_answer, has_valid_format, is_correct
from curriculum.data import load_problems
from curriculum.rewards import (
    REWARDS,
    RewardContext,
    bridge_stage2,
    bridge_stage2_length_term,
    bridge_stage3,
    bridge_stage3_length_term,
    score_group,
)
from curriculum.tasks import format_solution


def completion(steps: int, words: int, answer: str = "5") -> str:
    """A well-formatted completion with exactly `steps` step lines and `words` words."""
    filler = words - 2 * steps - 2
    assert filler >= 0
    lines = []
    for i in range(steps):
        share = filler // steps + (1 if i < filler % steps else 0)
        lines.append(" ".join([f"Step {i + 1}:"] + ["w"] * share))
    return "\n".join(lines + [f"Answer: {answer}"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Step 1: x\nAnswer: $1,234", "1234"),
        ("so #### -5", "-5"),
        ("thus \\boxed{3.50}", "3.5"),
        ("The total is 42.", "42"),
        ("Answer: 18.00", "18"),
        ("Answer: -0.5 dollars", "-0.5"),
        ("Answer: 3 apples and 5 pears", "3"),
        ("Answer: 1\nwait\nAnswer: 2", "2"),
        ("Answer: none\nbut 7 in the end", "7"),
        ("She paid $ 12 for 3,000 beads", "3000"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_correctness_on_real_gsm8k_rows():
    problems = load_problems("gsm8k:train", limit=200).problems
    for p in problems:
        text = format_solution(p.steps, p.answer)
        assert is_correct(text, p.answer) and has_valid_format(text)
        assert count_steps(text) == len(p.steps)
        assert not is_correct(format_solution(p.steps, str(int(float(p.answer)) + 1)), p.answer)


@pytest.mark.parametrize(
    "text, ok",
    [
        ("Step 1: a\nStep 2: b\nAnswer: 4", True),
        ("step 1: a\nanswer: 4\n", True),
        ("Step 1: a", False),
        ("Answer: 4", False),
        ("Answer: 4\nStep 1: a", False),
        ("Step 1: a\nAnswer: four", False),
    ],
)
def test_format(text, ok):
    assert has_valid_format(text) is ok


@pytest.mark.parametrize(
    "words, expected",
    [(112, 0.0), (12, 0.1), (140, -0.056), (126, -0.028), (141, -0.01), (190, -0.5), (240, -1.0), (400, -1.0)],
)
def test_stage2_length_bands_at_boundaries(words, expected):
    # teacher_steps = 4: budget B = 140, 0.8 B = 112
    assert bridge_stage2_length_term(words, 4) == pytest.approx(expected)


def test_stage2_bonus_cap_and_levels():
    assert bridge_stage2_length_term(50, 10) == pytest.approx(0.2)  # 0.001 * 230 capped at 0.2
    ctx = RewardContext(answer="5", teacher_steps=4, teacher_words=100)
    assert bridge_stage2(completion(4, 112), ctx) == pytest.approx(1.0)
    assert bridge_stage2(completion(2, 112), ctx) == pytest.approx(1.6)
    assert bridge_stage2(completion(1, 112), ctx) == pytest.approx(1.9)
    assert bridge_stage2(completion(6, 140), ctx) == pytest.approx(1 - 0.056)
    assert bridge_stage2(completion(4, 112, answer="6"), ctx) == -2.0
    assert bridge_stage2("the answer is 5", ctx) == -1.0
    eight = RewardContext(answer="5", teacher_steps=8, teacher_words=100)
    assert bridge_stage2(completion(1, 224), eight) == pytest.approx(1 + 0.9 + 0.0)


@pytest.mark.parametrize(
    "ratio, expected",
    [
        (2.5, -0.5),
        (2.0, -0.5),
        (1.5, -0.25),
        (1.0, 0.0),
        (0.9, 0.0),
        (0.8, 0.0),
        (0.65, 0.25),
        (0.5, 0.5),
        (0.35, 0.65),
        (0.2, 0.8),
        (0.0, 0.8),
    ],
)
def test_stage3_length_bands(ratio, expected):
    assert bridge_stage3_length_term(ratio) == pytest.approx(expected)


def test_stage3_reward():
    ctx = RewardContext(answer="5", teacher_steps=4, teacher_words=100)
    assert bridge_stage3(completion(2, 50), ctx) == pytest.approx(1.5)
    assert bridge_stage3(completion(2, 150), ctx) == pytest.approx(0.75)
    assert bridge_stage3(completion(2, 50, "4"), ctx) == -2.0
    assert bridge_stage3("5", ctx) == -1.0


@given(ratio=st.floats(0, 5))
def test_stage3_term_is_bounded_and_monotone(ratio):
    value = bridge_stage3_length_term(ratio)
    assert -0.5 <= value <= 0.8
    assert bridge_stage3_length_term(ratio + 0.01) <= value + 1e-12


@given(words=st.integers(1, 2000), steps=st.integers(1, 20))
def test_stage2_term_bounds(words, steps):
    assert -1.0 <= bridge_stage2_length_term(words, steps) <= 0.2


def test_group_length_reward_by_hand():
    ctx = RewardContext(answer="5", teacher_steps=2, teacher_words=20)
    group = [completion(1, 10), completion(2, 30), completion(1, 20, "4"), "5 and 5"]
    # lengths 10, 30, 20, 3 -> shortest 3, longest 30
    lams = [0.5 - (n - 3) / 27 for n in (10, 30, 20, 3)]
    expected = [1 + lams[0], 1 + lams[1], min(0, lams[2]), 1 + lams[3] - 0.5]
    assert score_group("group_length", group, ctx) == pytest.approx(expected)
    same = [completion(1, 10)] * 3
    assert score_group("group_length", same, ctx) == [1.0, 1.0, 1.0]


def test_registry_and_step_check_term():
    assert {"bridge_stage2", "bridge_stage3", "group_length", "correct"} <= set(REWARDS)
    ctx = RewardContext(answer="5", teacher_steps=2, teacher_words=20)
    good = "Step 1: 2+3 = 5\nAnswer: 5"
    bad = "Step 1: 2+2 = 5\nAnswer: 5"
    assert score_group("correct", [good, bad], ctx, step_check_weight=0.5) == [1.5, 1.0]
    with pytest.raises(KeyError, match="unknown reward 'nope'"):
        score_group("nope", [good], ctx)


def test_word_count():
    assert count_words("Step 1: a  b\n\nAnswer: 3") == 6
