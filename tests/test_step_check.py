import pytest

from curriculum.data import load_problems
from curriculum.step_check import check_chain, check_equation, equations_in, evaluate


@pytest.mark.parametrize(
    "equation, ok",
    [
        ("48/2 = 24", True),
        ("48+24 = 73", False),
        ("0.2 x 50 = $10", True),
        ("10/3 = 3.33", True),
        ("10/3 = 3.3", True),
        ("10/3 = 3", False),
        ("1,000 + 500 = 1,500", True),
        ("(3+4)*2 = 14", True),
        ("3*4 = 12 + 5 = 17", False),
        ("2 × 3 = 6", True),
        ("12 ÷ 4 = 3", True),
        ("-5 + 8 = 3", True),
    ],
)
def test_check_equation(equation, ok):
    assert check_equation(equation) is ok


@pytest.mark.parametrize("text", ["x = 5", "5 = 5", "= 3", "2 + = 4", "1/0 = 3"])
def test_not_an_equation(text):
    assert check_equation(text) is None


def test_evaluate_is_safe():
    assert evaluate("__import__('os')") is None
    assert evaluate("2**10") is None
    assert evaluate("7 - 2*3") == 1.0


def test_chain_counts_steps():
    text = "Step 1: He had 5, then 3+2=5 more.\nStep 2: 5*2 = 11 and 4/2 = 2\nStep 3: no math\nAnswer: 10"
    assert equations_in("He had 5, then 3+2=5 more.") == ["3+2=5"]
    result = check_chain(text)
    assert (result.equations, result.correct_equations, result.checked_steps, result.correct_steps) == (3, 2, 2, 1)
    assert result.step_accuracy == 0.5
    assert check_chain("no numbers").step_accuracy == 0.0


def test_gsm8k_annotations_check_out():
    problems = load_problems("gsm8k:train", limit=2000).problems
    results = [check_equation(expr) for p in problems for step in p.calculations for expr in step]
    judged = [r for r in results if r is not None]
    assert len(judged) > 0.9 * len(results)
    assert sum(judged) / len(judged) > 0.98
