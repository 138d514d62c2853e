"""Checks the arithmetic of a reasoning chain, step by step.

Finds equations such as `48/2 = 24`, `0.2 x 50 = $10` or `3*4 = 12 + 5 = 17` in each line,
evaluates every side with a tiny safe evaluator (numbers, + - * / and parentheses only) and
checks that all sides agree, allowing for the rounding the writer used. The share of steps whose
arithmetic checks out is an interpretability metric and an optional reward term.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass

_RUN = re.compile(r"[\d\s.,$()+\-*/×÷x=]+")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclass(frozen=True)
class ChainCheck:
    """Per chain: equations found and verified, and steps with equations / with all correct."""

    equations: int = 0
    correct_equations: int = 0
    checked_steps: int = 0
    correct_steps: int = 0

    @property
    def step_accuracy(self) -> float:
        """Share of steps with arithmetic whose arithmetic is all right (0 when none has any)."""
        return self.correct_steps / self.checked_steps if self.checked_steps else 0.0


def evaluate(expression: str) -> float | None:
    """Value of an arithmetic expression, or None when it is not plain arithmetic."""
    text = expression.replace("$", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"(?<=[\d)\s])x(?=[\d(\s])", "*", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError("not arithmetic")

    try:
        return walk(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _agrees(value: float, written: str) -> bool:
    """`value` equals the written result, up to the decimals the writer kept."""
    target = evaluate(written)
    if target is None:
        return False
    if abs(value - target) <= 1e-6 * max(1.0, abs(target)):
        return True
    # The writer may have rounded: 10/3 = 3.33 is right to the two decimals written.
    decimals = len(written.rsplit(".", 1)[1].strip()) if "." in written else 0
    return decimals > 0 and abs(value - target) <= 0.5 * 10**-decimals + 1e-9


def check_equation(text: str) -> bool | None:
    """True/False for a chain `a op b = c [= ...]`; None when `text` is not such an equation."""
    sides = [s.strip() for s in text.split("=")]
    if len(sides) < 2 or any(not s for s in sides):
        return None
    values = [v for v in map(evaluate, sides) if v is not None]
    if len(values) != len(sides):
        return None
    if not any(re.search(r"\d\s*[-+*/×÷x]\s*[\d(]", s) for s in sides):
        return None  # `x = 5` or `5 = 5`: nothing was computed
    return all(_agrees(values[i], sides[i + 1]) for i in range(len(sides) - 1))


def equations_in(line: str) -> list[str]:
    """Candidate equations in one line of prose."""
    found = []
    for run in _RUN.findall(line):
        # A comma followed by a space separates clauses; thousands commas have no space.
        for piece in re.split(r",\s+", run):
            if "=" in piece:
                found.append(piece.strip(" .,"))
    return found


def check_chain(text: str) -> ChainCheck:
    """Verify every equation in every non-empty line (a line is a step)."""
    equations = correct = checked_steps = correct_steps = 0
    for line in text.splitlines():
        results = [r for r in (check_equation(e) for e in equations_in(line)) if r is not None]
        if not results:
            continue
        equations += len(results)
        correct += sum(results)
        checked_steps += 1
        correct_steps += all(results)
    return ChainCheck(equations, correct, checked_steps, correct_steps)
