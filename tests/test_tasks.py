import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from curriculum.data import Problem, load_problems
from curriculum.tasks import (
    MASK,
    TaskConfig,
    build_completion_task,
    build_eval_task,
    build_reconstruction_task,
    build_rewrite_task,
    format_solution,
    mask_ratio_at,
    render_prompt,
    stage2_mask_count,
)

step_text = st.text(alphabet="abcdefghij 0123456789+=*", min_size=1, max_size=20).map(str.strip).filter(bool)
problems = st.builds(
    lambda q, steps, a: Problem(q, tuple(f"{s} #{i}" for i, s in enumerate(steps)), str(a)),
    st.text(min_size=1, max_size=30).filter(str.strip),
    st.lists(step_text, min_size=1, max_size=12),
    st.integers(-1000, 1000),
)


def _shown_lines(task):
    user = task.messages[-1]["content"]
    return [line[2:] for line in user.splitlines() if line.startswith("- ")]


@settings(max_examples=200, deadline=None)
@given(problem=problems, seed=st.integers(0, 2**32 - 1), prob=st.floats(0, 1))
def test_reconstruction_target_and_permutation(problem, seed, prob):
    task = build_reconstruction_task(problem, random.Random(seed), TaskConfig(stage1_mask_prob=prob))
    assert task.target == format_solution(problem.steps, problem.answer)
    shown = _shown_lines(task)
    unmasked = [s for i, s in enumerate(problem.steps) if i not in task.masked]
    assert Counter(line for line in shown if line != MASK) == Counter(unmasked)
    assert shown.count(MASK) == len(task.masked) <= 1
    assert sorted(task.shown_order) == list(range(len(problem.steps)))
    if len(problem.steps) < 2:
        assert task.masked == ()
    # same seed, same task
    again = build_reconstruction_task(problem, random.Random(seed), TaskConfig(stage1_mask_prob=prob))
    assert again == task


def test_stage1_mask_probability_follows_policy():
    problem = load_problems("gsm8k:train", limit=1).problems[0]
    rng = random.Random(0)
    masked = sum(bool(build_reconstruction_task(problem, rng, TaskConfig()).masked) for _ in range(4000))
    assert abs(masked / 4000 - 0.7) < 0.03
    never = TaskConfig(stage1_mask_policy="none")
    assert all(not build_reconstruction_task(problem, rng, never).masked for _ in range(100))
    ratio = TaskConfig(stage1_mask_policy="ratio", stage1_mask_prob=0.5)
    four_steps = Problem("q", ("a", "b", "c", "d"), "1")
    assert all(len(build_reconstruction_task(four_steps, rng, ratio).masked) == 2 for _ in range(50))


def test_stage1_question_only_share_shows_the_evaluation_prompt():
    problem = Problem("How many?", ("2 + 2 = 4", "4 * 3 = 12", "12 - 1 = 11"), "11")
    rng = random.Random(0)
    cfg = TaskConfig(stage1_mask_policy="ratio", stage1_mask_prob=0.5, stage1_question_only=0.25)
    tasks = [build_reconstruction_task(problem, rng, cfg) for _ in range(4000)]
    alone = [t for t in tasks if t.messages == build_eval_task(problem).messages]
    assert abs(len(alone) / 4000 - 0.25) < 0.03
    assert all(t.masked == (0, 1, 2) and t.target == format_solution(problem.steps, "11") for t in alone)
    assert all(len(t.masked) == 2 for t in tasks if t not in alone)


@settings(max_examples=200, deadline=None)
@given(problem=problems, seed=st.integers(0, 2**32 - 1), ratio=st.floats(0, 1), min_masked=st.integers(0, 4))
def test_completion_masks_follow_ratio(problem, seed, ratio, min_masked):
    cfg = TaskConfig(stage2_min_masked=min_masked)
    task = build_completion_task(problem, random.Random(seed), ratio, cfg)
    n = len(problem.steps)
    assert len(task.masked) == stage2_mask_count(n, ratio, min_masked)
    user = task.messages[-1]["content"]
    if ratio >= 1.0:
        assert len(task.masked) == n and "partial solution" not in user
    elif len(task.masked) < n:
        assert len(task.masked) <= n - 1
    for i, step in enumerate(problem.steps):
        if i not in task.masked and len(task.masked) < n:
            assert step in user
    # the answer never leaks into a stage-2 prompt through the target
    assert task.target == ""


def test_mask_count_bounds_and_paper_setting():
    assert stage2_mask_count(6, 0.5, 3) == 3
    assert stage2_mask_count(4, 0.5, 3) == 3
    assert stage2_mask_count(3, 0.5, 3) == 2  # at least one step stays visible
    assert stage2_mask_count(5, 1.0, 3) == 5
    assert stage2_mask_count(5, 0.0, 3) == 0


def test_mask_schedule_ramps_to_question_only():
    cfg = TaskConfig(stage2_ratio_start=0.5, stage2_ratio_end=1.0, stage2_ramp_fraction=0.5)
    ratios = [mask_ratio_at(step, 100, cfg) for step in range(101)]
    assert ratios[0] == 0.5 and ratios[25] == 0.75 and ratios[50] == 1.0 and ratios[100] == 1.0
    assert ratios == sorted(ratios)


def test_rewrite_and_eval_prompts():
    problem = Problem("How many?", ("2+3 = 5 apples",), "5")
    rewrite = build_rewrite_task(problem).messages[-1]["content"]
    assert "Step 1: 2+3 = 5 apples\nAnswer: 5" in rewrite and "How many?" in rewrite
    assert build_eval_task(problem).messages[-1]["content"] == "Problem: How many?"


def test_render_prompt_uses_chat_template_when_present():
    class Plain:
        chat_template = None

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "|".join(m["content"] for m in messages) + "<assistant>"

    messages = build_eval_task(Problem("Q?", ("s",), "1")).messages
    assert render_prompt(Chat(), messages).endswith("Problem: Q?<assistant>")
    assert render_prompt(Plain(), messages).endswith("Problem: Q?\n\nSolution:\n")
    assert render_prompt(Chat(), messages, use_chat_template=False).endswith("Solution:\n")
