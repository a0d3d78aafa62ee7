"""Program-aided answering: a model writes a small arithmetic program, corea runs it.

A language model that sets a word problem up right still slips when it adds the numbers up (the
embedded LLM writes "83 + 30 - 17 - 66 + 41 = 41"). Asked instead for a program, one assignment
per step, it leaves the arithmetic to corea, which runs the program in a sandbox and writes the
result as the reply's `Answer:` line. Everything downstream (parsing, checking, signals, traces)
reads that reply like any other.

A model is served this way when it is named `program:<model>` (`program:qwen`) wherever a model is
named. The sandbox runs no Python: it walks the program's syntax tree and allows only numbers,
variables, arithmetic, `print` and a few numeric built-ins, with bounds on size and magnitude.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import replace
from typing import Iterator

from corea.models import Generation, GenerationConfig, Model
from corea.protocol import SYSTEM_PROMPT, without_confidence

PREFIX = "program:"

PROGRAM_SYSTEM_PROMPT = (
    "Solve the word problem by writing a short Python program: one assignment per sentence, "
    "using only numbers, variables and + - * // operators, then print the answer. End the "
    "program with a comment `# Confidence: <0 to 1>` giving the probability that it is right. "
    "Reply with the code only."
)
# Models trained on notebooks go on to invent the program's output; that text is never needed.
OUTPUT_BLOCK = "```output"

MAX_STATEMENTS = 200
MAX_MAGNITUDE = 1e15

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS = {"int": int, "float": float, "round": round, "abs": abs, "min": min, "max": max}
_FENCED = re.compile(r"```([a-zA-Z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


class ProgramError(ValueError):
    """The program cannot be run: it uses something the sandbox does not allow, or fails."""


def extract_code(reply: str) -> str:
    """The program in a reply: its code block (code_span), else the whole reply without its
    Confidence line."""
    span = code_span(reply)
    return reply[span[0]:span[1]] if span is not None else without_confidence(reply)


def code_span(reply: str) -> tuple[int, int] | None:
    """Where the program of a reply lies (start, end): its first fenced code block that is not an
    output block (one the reply left open runs to its end); None when it has none."""
    for match in _FENCED.finditer(reply or ""):
        if match.group(1).lower() in ("", "python", "py", "python3"):
            return match.span(2)
    return None


def run_program(code: str) -> float:
    """The value a program prints last (else its last assignment), computed in the sandbox."""
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        raise ProgramError(f"not a program: {error.msg} (line {error.lineno})") from None
    if len(tree.body) > MAX_STATEMENTS:
        raise ProgramError(f"the program has {len(tree.body)} statements; at most "
                           f"{MAX_STATEMENTS} run")
    variables: dict[str, float] = {}
    printed = assigned = None
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            value = _evaluate(statement.value, variables)
            for target in statement.targets:
                variables[_target_name(target)] = value
            assigned = value
        elif isinstance(statement, ast.AugAssign) and type(statement.op) in _BINARY:
            name = _target_name(statement.target)
            if name not in variables:
                raise ProgramError(f"{name} is used before it is set")
            value = _apply(statement.op, variables[name], _evaluate(statement.value, variables))
            variables[name] = assigned = value
        elif isinstance(statement, ast.Expr) and _is_print(statement.value):
            if len(statement.value.args) != 1 or statement.value.keywords:
                raise ProgramError("print takes one value here")
            printed = _evaluate(statement.value.args[0], variables)
        elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
                and isinstance(statement.value.value, str):
            continue  # a docstring
        else:
            raise ProgramError(f"line {statement.lineno}: only assignments and print are run")
    result = printed if printed is not None else assigned
    if result is None:
        raise ProgramError("the program computes nothing")
    return result


def finished_program(reply: str) -> str:
    """The program of a reply finish_reply completed: its code, without the `Answer:` line that
    was appended (which, where the program is not fenced, would be read as code)."""
    head, _, last = (reply or "").rstrip().rpartition("\n")
    return extract_code(head if last.startswith("Answer:") else reply)


def one_line(code: str) -> str:
    """A program as one line of statements (`books = 12; books -= 7; print(books)`): comments
    and layout dropped, so it can be quoted as a note."""
    return "; ".join(ast.unparse(statement) for statement in ast.parse(code).body)


def format_number(value: float) -> str:
    """A computed answer as a reply writes it: whole numbers without a decimal point."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


def finish_reply(reply: str) -> str:
    """`reply` with the `Answer:` line its program computes; unchanged when the program cannot
    run (the reply then has no answer of its own making, and counts as a format failure)."""
    try:
        value = run_program(extract_code(reply))
    except (ProgramError, ArithmeticError):
        return reply
    return f"{reply.rstrip()}\nAnswer: {format_number(value)}"


def is_question_prompt(messages: list[dict]) -> bool:
    """Whether `messages` ask a question in corea's format (what program mode rewrites)."""
    return bool(messages) and messages[0] == {"role": "system", "content": SYSTEM_PROMPT}


def program_messages(messages: list[dict]) -> list[dict]:
    """corea's chat messages turned into a request for a program: the program prompt instead of
    corea's system prompt, and no worked examples (they show prose answers)."""
    question = [m for m in messages if m["role"] == "user"][-1]
    return [{"role": "system", "content": PROGRAM_SYSTEM_PROMPT}, question]


class ProgramAidedModel(Model):
    """`inner` asked for programs; each reply ends with the answer its program computes."""

    few_shot = False

    def __init__(self, inner: Model):
        self.inner = inner
        self.name = f"{PREFIX}{inner.name}"
        # What the cascade reads off a model: its token log-probabilities (program_probability
        # reads them), and a trained model's Platt map (applied only to the signal it maps).
        self.logprobs = bool(getattr(inner, "logprobs", False))
        self.confidence_map = getattr(inner, "confidence_map", None)

    def _finish(self, generation: Generation) -> Generation:
        # The token log-probabilities describe the program, a prefix of the finished reply; the
        # appended answer has no tokens, so the answer's token signals find none and only
        # program_probability (corea.signals) reads them.
        return replace(generation, text=finish_reply(generation.text))

    @staticmethod
    def _config(config: GenerationConfig) -> GenerationConfig:
        return replace(config, stop=(*config.stop, OUTPUT_BLOCK))

    def generate(self, conversations, config=GenerationConfig()):
        # Only questions in corea's format are asked for programs; any other request (a strategy
        # for the memory to store) goes to the model as it is.
        asked = [is_question_prompt(c) for c in conversations]
        replies = self.inner.generate(
            [program_messages(c) if a else c for c, a in zip(conversations, asked)],
            self._config(config))
        return [self._finish(r) if a else r for r, a in zip(replies, asked)]

    def continue_reply(self, messages, prefix, config=GenerationConfig(), step_end=None):
        """Taking over a reply (step-level routing): the program is written whole, from the
        question alone. The prose so far is not given to it, since a program recomputes every
        step and prose is no program; so the call, and what it costs, are those of answering the
        question afresh, and a step's end does not apply (a program is one step). The text so
        far stays before the program in the reply; the program's `Answer:` line is the last."""
        if not is_question_prompt(messages):
            return self.inner.continue_reply(messages, prefix, config, step_end)
        return self.generate([messages], config)[0]

    def stream(self, messages, config=GenerationConfig()) -> Iterator[Generation]:
        if not is_question_prompt(messages):
            yield from self.inner.stream(messages, config)
            return
        for snapshot in self.inner.stream(program_messages(messages), self._config(config)):
            yield self._finish(snapshot) if snapshot.done else snapshot


def is_program_spec(spec: str) -> bool:
    return spec.strip().lower().startswith(PREFIX)


def base_spec(spec: str) -> str:
    """The model a `program:` spec names (the spec itself when it is not one)."""
    return spec.strip()[len(PREFIX):].strip() if is_program_spec(spec) else spec


def _target_name(target: ast.expr) -> str:
    if not isinstance(target, ast.Name):
        raise ProgramError(f"line {target.lineno}: only plain variables can be assigned")
    return target.id


def _is_print(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
        and node.func.id == "print"


def _checked(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProgramError("only numbers are computed")
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ProgramError("a value grew past the sandbox's bound")
    return value


def _apply(op: ast.operator, left, right):
    """One arithmetic operation, in an expression or an augmented assignment (`x //= 3`)."""
    try:
        return _checked(_BINARY[type(op)](left, right))
    except ZeroDivisionError:
        raise ProgramError("division by zero") from None


def _evaluate(node: ast.expr, variables: dict[str, float]):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id not in variables:
            raise ProgramError(f"{node.id} is used before it is set")
        return variables[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _apply(node.op, _evaluate(node.left, variables), _evaluate(node.right, variables))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand, variables)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in _FUNCTIONS and not node.keywords and 1 <= len(node.args) <= 4:
        arguments = [_evaluate(a, variables) for a in node.args]
        try:
            return _checked(_FUNCTIONS[node.func.id](*arguments))
        except (TypeError, ValueError) as error:
            raise ProgramError(f"{node.func.id}: {error}") from None
    raise ProgramError(f"line {getattr(node, 'lineno', '?')}: the sandbox does not run "
                       f"{type(node).__name__}")
