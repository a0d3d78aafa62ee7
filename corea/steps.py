"""Step-level routing: the small model writes a reply one step at a time, and a router decides,
step by step, whether to keep the small model's step or to have the large model write it.

STEER (arXiv 2511.06190) and policy-guided stepwise routing (arXiv 2605.06116) route each
reasoning step instead of the whole question: the SLM drafts the next step; a router scores the
draft from the SLM's own token statistics; a draft scoring at least the threshold is kept, and
otherwise it is thrown away and the LLM writes from the text so far (its reply continued as an
assistant-message prefix, `Model.continue_reply`).

A step is the text up to a newline or a sentence's full stop. A step that reaches
`step_max_tokens` without one is cut there and counted (`cut_steps`).

Costs. A model's consecutive steps are one generation paused at each step's end: its prompt is
read once. Every switch makes the next writer read the whole text so far again (prompt + the
steps written so far), billed as prompt tokens, in price and in FLOPs (2 x parameters per token
read or written): no cache is assumed across writers, so the figures are what an API would bill.
Thrown-away drafts are billed too.

Switches. `max_switches` bounds how many times per question the LLM is called in. With
`llm_steps: 0` (the default) the LLM, once called, writes the rest of the reply: one switch at
most, the cheapest shape when a switch re-reads a long prompt. With `llm_steps: N` the LLM writes
N steps and the SLM drafts again (STEER's shape); the last switch the limit allows lets the LLM
finish, so a question never loops.

Faults. An LLM that fails (ModelError) in the middle of a question leaves the SLM to finish the
reply, marked `fallback`, as the question-level cascade answers with the last tier that answered.

Routers (`router` in the step config), each a score of one SLM draft in [0, 1]:
- `threshold`: one token statistic of the draft (STEER's rule), by default the geometric mean
  probability of its tokens;
- `gmm`: the posterior of the confident component of a two-component Gaussian mixture fitted on
  training traces' step statistics (`python -m training router`);
- `learned`: a logistic policy over the step's features, fitted on training traces whose steps
  are labelled against reference solutions (`python -m training router`).

With `answer_threshold`, the reply's confidence step is not scored by the router but kept only when
the SLM's stated confidence, read as the question-level cascade reads it, reaches that threshold:
the router watches the reasoning and the calibrated confidence the answer (0 keeps every
confidence step, so only the reasoning is routed).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from corea import embedded
from corea.costs import Price
from corea.models import Generation, GenerationConfig, Model, ModelError
from corea.protocol import confidence_span
from corea.signals import answer_probability, verbalized_mean

DELIMITERS = ("\n", ". ")
ROUTERS = ("threshold", "gmm", "learned")
STATISTICS = ("mean_prob", "min_prob", "mean_margin", "min_margin")
DEFAULT_ROUTER_DIR = Path(__file__).resolve().parent.parent / "adapters" / "step-router"


# ------------------------------------------------------------------------------------ splitting

def step_end(text: str, delimiters: tuple[str, ...] = DELIMITERS) -> int | None:
    """Where the first step of `text` ends (an index to cut at), or None when no step has ended.

    A newline ends a step and stays with it; a sentence's full stop (". ") ends it before the
    space, so the next step starts with its own space, as the tokenizer would have written it.
    Delimiters before any written character (leading blank lines) do not end a step."""
    start = len(text) - len(text.lstrip())
    best = None
    for delimiter in delimiters:
        found = text.find(delimiter, start)
        if found < 0:
            continue
        cut = found + len(delimiter.rstrip(" ")) if delimiter.strip() else found + len(delimiter)
        if best is None or cut < best:
            best = cut
    return best


def split_steps(text: str, delimiters: tuple[str, ...] = DELIMITERS) -> list[str]:
    """A whole reply as its steps, in order; joined they give the reply back."""
    steps = []
    while text:
        cut = step_end(text, delimiters)
        if cut is None or cut >= len(text):
            steps.append(text)
            break
        steps.append(text[:cut])
        text = text[cut:]
    return steps


# ------------------------------------------------------------------------------------- features

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
_EQUATION = re.compile(
    r"(-?\$?\d[\d,]*(?:\.\d+)?(?:\s*[-+*/x×÷]\s*\$?\d[\d,]*(?:\.\d+)?)+)"
    r"\s*=\s*\$?(-?\d[\d,]*(?:\.\d+)?)")


def _value(text: str) -> float:
    return float(text.replace(",", "").replace("$", ""))


def equation_check(text: str) -> float:
    """1 when every `a op b = c` in the step computes, 0 when one does not, 0.5 when there is
    none: a calculator's view of the step, which a 135M model's token probabilities miss."""
    checks = []
    for left, right in _EQUATION.findall(text):
        expression = left.replace(",", "").replace("$", "").replace("x", "*").replace(
            "×", "*").replace("÷", "/")
        if not re.fullmatch(r"[-+*/.\d\s]+", expression):
            continue
        try:
            value = eval(expression, {"__builtins__": {}}, {})  # digits and operators only
        except (ZeroDivisionError, SyntaxError):
            checks.append(False)
            continue
        checks.append(math.isclose(value, _value(right), rel_tol=1e-6, abs_tol=1e-6))
    if not checks:
        return 0.5
    return 1.0 if all(checks) else 0.0


def step_features(text: str, token_logprobs, *, index: int, cut: bool,
                  previous: str = "") -> dict:
    """What a router reads of one SLM draft: token statistics, length, position, the check of
    its equations. Token statistics are None when the draft has no tokens."""
    rows = [row for row in token_logprobs or () if row[1] is not None]
    probs = [math.exp(row[1]) for row in rows]
    margins = [math.exp(row[1]) - (math.exp(row[2]) if row[2] is not None else 0.0)
               for row in rows]
    stats = {
        "mean_prob": math.exp(sum(row[1] for row in rows) / len(rows)) if rows else None,
        "min_prob": min(probs) if probs else None,
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "min_margin": min(margins) if margins else None,
    }
    answer_line = bool(re.match(r"\s*(final\s+)?answer\s*:", text, re.I))
    features = {**stats, "tokens": len(rows), "index": index, "cut": cut,
                "numbers": len(_NUMBER.findall(text)), "equation_check": equation_check(text),
                "answer_line": answer_line,
                # a sentence the reply already holds: the small model going round in a loop
                "repeat": bool(text.strip()) and text.strip() in previous}
    # The question-level token signals, for comparing with question-level routing.
    if answer_line:
        features["answer_probability"] = answer_probability(text, token_logprobs)
    if confidence_span(text) is not None:
        features["verbalized_mean"] = verbalized_mean(text, token_logprobs)
    return features


# -------------------------------------------------------------------------------------- routers

class ThresholdRouter:
    """STEER's rule: the draft's score is one of its token statistics."""

    kind = "threshold"

    def __init__(self, statistic: str = "mean_prob"):
        if statistic not in STATISTICS:
            raise ValueError(f"unknown step statistic {statistic!r}; choose one of "
                             f"{', '.join(STATISTICS)}")
        self.statistic = statistic

    def score(self, features: dict) -> float:
        value = features.get(self.statistic)
        return float(value) if value is not None else 0.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def mixture_inputs(features: dict, statistics: tuple[str, ...]) -> list[float]:
    """The mixture's coordinates: the statistics on the logit scale, where they spread out."""
    return [_logit(features.get(name) or 0.0) for name in statistics]


class MixtureRouter:
    """A two-component diagonal Gaussian mixture over step statistics; the score is the
    posterior probability of the component with the higher mean (the confident steps)."""

    kind = "gmm"

    def __init__(self, statistics, weights, means, variances):
        self.statistics = tuple(statistics)
        self.weights, self.means, self.variances = weights, means, variances
        self.confident = max(range(2), key=lambda k: sum(self.means[k]))

    def _log_density(self, k: int, x: list[float]) -> float:
        return math.log(self.weights[k]) + sum(
            -0.5 * (math.log(2 * math.pi * v) + (xi - m) ** 2 / v)
            for xi, m, v in zip(x, self.means[k], self.variances[k]))

    def score(self, features: dict) -> float:
        x = mixture_inputs(features, self.statistics)
        logs = [self._log_density(k, x) for k in range(2)]
        top = max(logs)
        total = sum(math.exp(value - top) for value in logs)
        return math.exp(logs[self.confident] - top) / total

    def to_dict(self) -> dict:
        return {"kind": self.kind, "statistics": list(self.statistics), "weights": self.weights,
                "means": self.means, "variances": self.variances}


LEARNED_FEATURES = ("mean_prob", "min_prob", "mean_margin", "min_margin", "tokens", "index",
                    "cut", "numbers", "equation_check", "answer_line", "repeat")


def policy_inputs(features: dict) -> list[float]:
    """The learned policy's inputs: probabilities on the logit scale, counts on a log scale."""
    values = []
    for name in LEARNED_FEATURES:
        value = features.get(name)
        if name in STATISTICS:
            values.append(_logit(value if value is not None else 0.0))
        elif name in ("tokens", "index", "numbers"):
            values.append(math.log1p(float(value or 0)))
        else:
            values.append(float(value or 0))
    return values


class LearnedRouter:
    """A logistic policy: the probability that keeping the SLM's step keeps the solution right."""

    kind = "learned"

    def __init__(self, features, mean, scale, weights, bias):
        if tuple(features) != LEARNED_FEATURES:
            raise ValueError("this router was fitted on other step features; fit it again with "
                             "`python -m training router`")
        self.mean, self.scale, self.weights, self.bias = mean, scale, weights, bias

    def score(self, features: dict) -> float:
        x = policy_inputs(features)
        z = self.bias + sum(w * (xi - m) / s for w, xi, m, s in
                            zip(self.weights, x, self.mean, self.scale))
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "features": list(LEARNED_FEATURES), "mean": self.mean,
                "scale": self.scale, "weights": self.weights, "bias": self.bias}


def fitted_router_dir(model_name: str | None = None) -> Path:
    """The shipped routers fitted on `model_name`'s own steps (an `adapters/step-router*` folder
    whose fit.json names that model), else the default ones in adapters/step-router/."""
    if model_name:
        for folder in sorted(DEFAULT_ROUTER_DIR.parent.glob(f"{DEFAULT_ROUTER_DIR.name}*")):
            try:
                fitted_on = json.loads((folder / "fit.json").read_text()).get("model")
            except (OSError, ValueError):
                continue
            if fitted_on == model_name:
                return folder
    return DEFAULT_ROUTER_DIR


def load_router(kind: str, *, statistic: str = "mean_prob", path: str | Path | None = None,
                model_name: str | None = None):
    """The router a step config names; fitted routers are read from `path` (by default the
    shipped ones fitted on `model_name`'s steps, else those in adapters/step-router/)."""
    if kind == "threshold":
        return ThresholdRouter(statistic)
    if kind not in ROUTERS:
        raise ValueError(f"unknown step router {kind!r}; choose one of {', '.join(ROUTERS)}")
    path = Path(path) if path else fitted_router_dir(model_name) / f"{kind}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the {kind} step router {path}: {error}; fit one with "
                         "`python -m training router`") from error
    if data.get("kind") != kind:
        raise ValueError(f"{path} holds a {data.get('kind')!r} router, not {kind!r}")
    if kind == "gmm":
        return MixtureRouter(data["statistics"], data["weights"], data["means"],
                             data["variances"])
    return LearnedRouter(data["features"], data["mean"], data["scale"], data["weights"],
                         data["bias"])


# --------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class StepConfig:
    """How step-level routing runs; the `"step"` object of a cascade config. The keep threshold
    is the first tier's `threshold`."""

    router: str = "threshold"
    statistic: str = "mean_prob"  # the threshold router's statistic
    # a fitted gmm / learned router (default: the shipped one fitted on the SLM, else the first)
    router_file: str | None = None
    # The confidence step (the reply's `Confidence:` line) is kept only when the SLM's stated
    # confidence, as the question-level cascade reads it (its digits' mean through the SLM's
    # Platt map), reaches this; None: it is routed like any step. With every reasoning step
    # kept this is question-level routing; with the router also refusing unsure steps, the
    # question leaves early.
    answer_threshold: float | None = None
    max_switches: int = 1  # how many times per question the LLM may be called in
    llm_steps: int = 0  # steps the LLM writes per switch; 0 = the rest of the reply
    step_max_tokens: int = 64  # a step with no delimiter by then is cut
    max_steps: int = 24
    delimiters: tuple[str, ...] = DELIMITERS

    def __post_init__(self):
        if self.router not in ROUTERS:
            raise ValueError(f"unknown step router {self.router!r}; choose one of "
                             f"{', '.join(ROUTERS)}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown step statistic {self.statistic!r}; choose one of "
                             f"{', '.join(STATISTICS)}")
        if self.answer_threshold is not None and not (
                isinstance(self.answer_threshold, (int, float))
                and 0.0 <= self.answer_threshold <= 1.0):
            raise ValueError("step option answer_threshold must be a number in [0, 1]")
        for name in ("max_switches", "llm_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"step option {name} must be a whole number >= 0")
        for name in ("step_max_tokens", "max_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"step option {name} must be a whole number >= 1")
        if not self.delimiters or not all(isinstance(d, str) and d for d in self.delimiters):
            raise ValueError("step delimiters must be a list of non-empty strings")

    def to_dict(self) -> dict:
        data = {key: value for key, value in asdict(self).items()
                if value != getattr(StepConfig, key, None) or key == "router"}
        if "delimiters" in data:
            data["delimiters"] = list(data["delimiters"])
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> "StepConfig":
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown step option(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        if "delimiters" in data:
            data["delimiters"] = tuple(data["delimiters"] or ())
        return cls(**data)

    def load_router(self, model_name: str | None = None):
        """This config's router; without a router_file, the shipped one fitted on the steps of
        `model_name` (the SLM) where there is one."""
        return load_router(self.router, statistic=self.statistic, path=self.router_file,
                           model_name=model_name)


# ------------------------------------------------------------------------------------ the loop

@dataclass
class Writer:
    """One side of the routing: a model, its price, its size for FLOPs."""

    model: Model
    price: Price

    @property
    def params_billion(self) -> float | None:
        found = embedded.resolve_embedded(self.model.name.split("+")[0])
        return found.params_billion if found else None


@dataclass
class StepReply:
    """A reply written step by step, with what it cost."""

    text: str = ""
    steps: list[dict] = field(default_factory=list)  # {model, text, confidence, ...} in order
    switches: int = 0
    cut_steps: int = 0
    fallback: bool = False
    error: str | None = None
    calls: list[dict] = field(default_factory=list)  # one per model call: what it read and wrote

    def totals(self) -> dict:
        """Tokens, price and FLOPs, per model and in all (billed prompt = what was re-read)."""
        by_model: dict[str, dict] = {}
        for call in self.calls:
            entry = by_model.setdefault(call["model"], {"prompt_tokens": 0, "completion_tokens": 0,
                                                        "cost": 0.0, "flops": 0.0, "calls": 0})
            entry["prompt_tokens"] += call["billed_prompt_tokens"]
            entry["completion_tokens"] += call["completion_tokens"]
            entry["cost"] += call["cost"]
            entry["flops"] += call["flops"] or 0.0
            entry["calls"] += 1
        return {
            "prompt_tokens": sum(e["prompt_tokens"] for e in by_model.values()),
            "completion_tokens": sum(e["completion_tokens"] for e in by_model.values()),
            "cost": sum(e["cost"] for e in by_model.values()),
            "flops": sum(e["flops"] for e in by_model.values()),
            "latency_s": sum(call["latency_s"] for call in self.calls),
            "by_model": by_model,
        }

    def step_shares(self) -> dict[str, float]:
        """Share of the reply's steps each model wrote."""
        if not self.steps:
            return {}
        counts: dict[str, int] = {}
        for step in self.steps:
            counts[step["model"]] = counts.get(step["model"], 0) + 1
        return {name: count / len(self.steps) for name, count in counts.items()}


def _finished(text: str) -> bool:
    from corea.protocol import parse_reply

    parsed = parse_reply(text)
    tail = text.rstrip().rsplit("\n", 1)[-1]
    return parsed.format_ok and re.match(r"\s*confidence", tail, re.I) is not None


class StepRouter:
    """Writes one question's reply step by step with two writers and a router."""

    def __init__(self, slm: Writer, llm: Writer, threshold: float, config: StepConfig,
                 generation: GenerationConfig = GenerationConfig(), router=None):
        if not getattr(slm.model, "logprobs", False):
            raise ValueError(f"step routing reads {slm.model.name}'s token probabilities: load "
                             "it with logprobs=True")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("the step threshold must be in [0, 1]")
        self.slm, self.llm, self.threshold, self.config = slm, llm, threshold, config
        self.generation = generation
        self.router = router or config.load_router(slm.model.name)

    def _step_end(self, text: str) -> int | None:
        return step_end(text, self.config.delimiters)

    def _call(self, reply: StepReply, writer: Writer, messages: list[dict], whole: bool,
              continuing: bool, budget: int) -> tuple[Generation, bool]:
        """One call: a step (or, `whole`, the rest of the reply). Returns the generation and
        whether the reply is finished."""
        config = GenerationConfig(max_new_tokens=max(1, budget),
                                  temperature=self.generation.temperature,
                                  top_p=self.generation.top_p, seed=self.generation.seed)
        ended = []  # set when the backend found a step's end (the cut text no longer shows it)

        def at_step_end(text: str) -> int | None:
            cut = self._step_end(text)
            if cut is not None:
                ended.append(cut)
            return cut

        generation = writer.model.continue_reply(messages, reply.text, config,
                                                 None if whole else at_step_end)
        # Consecutive steps of one writer are one paused generation: its prompt is read once.
        billed_prompt = 0 if continuing else generation.prompt_tokens
        params = writer.params_billion
        reply.calls.append({
            "model": writer.model.name, "prompt_tokens": generation.prompt_tokens,
            "billed_prompt_tokens": billed_prompt,
            "completion_tokens": generation.completion_tokens,
            "cost": writer.price.cost(billed_prompt, generation.completion_tokens),
            "flops": 2e9 * params * (billed_prompt + generation.completion_tokens)
            if params else None,
            "latency_s": generation.latency_s,
        })
        generation = replace(generation, done=bool(ended) or whole)  # done: ended at a delimiter
        finished = whole or (not ended and generation.completion_tokens < budget) \
            or _finished(reply.text + generation.text)
        return generation, finished

    def _budget(self, reply: StepReply) -> int:
        """Tokens the reply may still take (thrown-away drafts do not count: max_steps bounds
        them)."""
        used = sum(call["completion_tokens"] for call in reply.calls if call.get("kept", True))
        return self.generation.max_new_tokens - used

    def _keep(self, reply: StepReply, writer: Writer, generation: Generation, budget: int,
              whole: bool, on_step, **extra) -> None:
        step = {"model": writer.model.name, "text": generation.text,
                "confidence": extra.pop("confidence", None), **extra}
        if not whole and not generation.done and generation.completion_tokens >= budget:
            step["cut"] = True  # no delimiter within the step's budget
            reply.cut_steps += 1
        reply.steps.append(step)
        reply.text += generation.text
        if on_step:
            on_step(step)

    def answer(self, question: str, hint: str | None = None, on_step=None) -> StepReply:
        """Write the reply to `question`, each writer reading its own prompt: a model served
        zero-shot (a trained adapter) is not given the worked examples the other one needs."""
        from corea.protocol import build_messages

        return self.run(build_messages(question, hint=hint, few_shot=self.slm.model.few_shot),
                        on_step,
                        build_messages(question, hint=hint, few_shot=self.llm.model.few_shot))

    def run(self, messages: list[dict], on_step=None,
            llm_messages: list[dict] | None = None) -> StepReply:
        """Write the reply; `on_step(step)` is called as each kept step is known (streaming).
        The LLM reads `llm_messages` when given (its own prompt), else `messages`."""
        slm_messages, llm_messages = messages, llm_messages or messages
        reply, config = StepReply(), self.config
        last_writer = None  # who generated last, with nothing inserted since
        llm_left = 0  # steps the LLM still writes before the SLM drafts again (-1: to the end)
        draft_note: dict = {}  # the SLM draft an LLM step replaced
        while len(reply.steps) < config.max_steps:
            budget = self._budget(reply)
            if budget <= 0:
                break
            if llm_left:
                whole = llm_left < 0
                call_budget = budget if whole else min(config.step_max_tokens, budget)
                try:
                    generation, finished = self._call(reply, self.llm, llm_messages, whole,
                                                      last_writer is self.llm, call_budget)
                except ModelError as error:
                    # The LLM failed mid-question: the SLM finishes the reply, as the
                    # question-level cascade answers with the last tier that answered.
                    reply.fallback, reply.error = True, str(error)
                    self._finish_with(reply, self.slm, slm_messages, on_step)
                    return reply
                last_writer = self.llm
                self._keep(reply, self.llm, generation, call_budget, whole, on_step, **draft_note)
                draft_note = {}
                llm_left = llm_left - 1 if llm_left > 0 else llm_left
                if finished:
                    break
                continue
            step_budget = min(config.step_max_tokens, budget)
            draft, finished = self._call(reply, self.slm, slm_messages, False,
                                         last_writer is self.slm, step_budget)
            last_writer = self.slm
            cut = not draft.done and draft.completion_tokens >= step_budget
            features = step_features(draft.text, draft.token_logprobs,
                                     index=len(reply.steps), cut=cut, previous=reply.text)
            kept, score = keeps(features, self.router, self.threshold, config.answer_threshold,
                                getattr(self.slm.model, "confidence_map", None))
            # An empty draft is the SLM ending the reply: nothing to hand over.
            if kept or reply.switches >= config.max_switches or not draft.text:
                self._keep(reply, self.slm, draft, step_budget, False, on_step,
                           confidence=round(score, 4),
                           features=features)
                if finished:
                    break
                continue
            # Thrown away: it was paid for, and the SLM's state no longer matches the text.
            reply.calls[-1]["kept"] = False
            reply.switches += 1
            last_writer = None
            last_switch = reply.switches >= config.max_switches
            llm_left = -1 if (config.llm_steps == 0 or last_switch) else config.llm_steps
            draft_note = {"draft": draft.text, "draft_confidence": round(score, 4),
                          "draft_features": features}
        return reply

    def _finish_with(self, reply: StepReply, writer: Writer, messages: list[dict],
                     on_step) -> None:
        budget = self._budget(reply)
        if budget > 0:
            generation, _ = self._call(reply, writer, messages, True, False, budget)
            self._keep(reply, writer, generation, budget, True, on_step)


# ------------------------------------------------------------------------------ replay on traces

def answer_step_score(features: dict, confidence_map=None) -> float | None:
    """The score of a confidence step under `answer_threshold`: the stated confidence's mean
    over its digits, through the SLM's Platt map when it maps that signal; None for any other
    step."""
    if "verbalized_mean" not in features:
        return None
    value = features["verbalized_mean"]
    if value is None:
        return 0.0  # a confidence the digits cannot be read from: deferred, as the cascade does
    if confidence_map is not None and confidence_map.signal == "verbalized_mean":
        return confidence_map(value)
    return value


def keeps(features: dict, router, threshold: float, answer_threshold: float | None = None,
          confidence_map=None) -> tuple[bool, float]:
    """Whether a draft is kept, and its score: the router's, or for the confidence step under
    `answer_threshold` the stated confidence as the cascade reads it."""
    answer = answer_step_score(features, confidence_map) if answer_threshold is not None \
        else None
    if answer is not None:
        return answer >= answer_threshold, answer
    score = router.score(features)
    return score >= threshold, score


def handoff_step(slm_steps: list[dict], router, threshold: float,
                 answer_threshold: float | None = None, confidence_map=None) -> int | None:
    """The first of the SLM's steps the router would not keep (the switch point when the LLM,
    once called, writes the rest), or None when it keeps them all."""
    for index, step in enumerate(slm_steps):
        if step["text"].strip() and not keeps(step["features"], router, threshold,
                                               answer_threshold, confidence_map)[0]:
            return index
    return None


def replay_handoff(slm_row: dict, k: int | None, continuation: dict | None, *, llm_name: str,
                   llm_price: Price, llm_params: float | None, checker: str = "numeric") -> dict:
    """The step-routed row a one-switch run (`max_switches: 1, llm_steps: 0`) writes, read off an
    SLM step trace and the LLM's continuation after the SLM's first `k` steps. Greedy decoding
    makes it the same row the live run writes; it lets a sweep over routers and thresholds
    reuse each continuation instead of running the models again."""
    from corea.checking import is_correct
    from corea.protocol import parse_reply

    slm_steps, slm_calls = slm_row["steps"], slm_row["calls"]
    if k is None:
        return {**slm_row, "switches": 0, "handoff": None}
    if continuation is None:
        raise ValueError(f"no LLM continuation of {slm_row['id']} after step {k}")
    # The SLM paid for its first k steps and for the draft of step k+1, thrown away.
    slm_paid = slm_calls[:k + 1]
    llm_cost = llm_price.cost(continuation["prompt_tokens"], continuation["completion_tokens"])
    llm_flops = 2e9 * llm_params * (continuation["prompt_tokens"]
                                    + continuation["completion_tokens"]) if llm_params else 0.0
    steps = [dict(step) for step in slm_steps[:k]]
    llm_steps = [{"model": llm_name, "text": text, "confidence": None}
                 for text in split_steps(continuation["text"])] or [
        {"model": llm_name, "text": "", "confidence": None}]
    llm_steps[0].update(draft=slm_steps[k]["text"], draft_confidence=slm_steps[k]["confidence"])
    steps += llm_steps
    output = "".join(step["text"] for step in slm_steps[:k]) + continuation["text"]
    parsed = parse_reply(output)
    slm_cost = sum(call["cost"] for call in slm_paid)
    return {
        **{key: slm_row[key] for key in ("id", "task", "split", "question", "gold")},
        **({"meta": slm_row["meta"]} if "meta" in slm_row else {}),
        "output": output, "answer": parsed.answer, "confidence": parsed.confidence,
        "format_ok": parsed.format_ok,
        "correct": is_correct(parsed.answer, slm_row["gold"], checker),
        "prompt_tokens": sum(c["billed_prompt_tokens"] for c in slm_paid)
        + continuation["prompt_tokens"],
        "completion_tokens": sum(c["completion_tokens"] for c in slm_paid)
        + continuation["completion_tokens"],
        "cost": slm_cost + llm_cost,
        "flops": sum(c["flops"] or 0.0 for c in slm_paid) + llm_flops,
        "cost_by_model": {slm_row["model"]: slm_cost, llm_name: llm_cost},
        "latency_s": round(sum(c["latency_s"] for c in slm_paid) + continuation["latency_s"], 4),
        "steps": steps, "switches": 1, "handoff": k,
        "cut_steps": sum(bool(step.get("cut")) for step in steps),
    }


# --------------------------------------------------------------------------- SLM step traces

def slm_step_row(example, task, split: str, model_name: str, reply: StepReply) -> dict:
    """The SLM alone, written step by step: a trace row with its steps (each with the features a
    router reads) and its calls (what each cost)."""
    from corea.checking import is_correct
    from corea.protocol import parse_reply

    parsed = parse_reply(reply.text)
    totals = reply.totals()
    answers = [s for s in reply.steps if (s.get("features") or {}).get("answer_line")]
    stated = [s["features"]["verbalized_mean"] for s in reply.steps
              if (s.get("features") or {}).get("verbalized_mean") is not None]
    return {
        "id": example.id, "task": task.name, "split": split, "question": example.question,
        "gold": example.gold, "model": model_name, "output": reply.text,
        "answer": parsed.answer, "confidence": parsed.confidence, "format_ok": parsed.format_ok,
        "correct": is_correct(parsed.answer, example.gold, task.checker),
        "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"],
        "cost": totals["cost"], "flops": totals["flops"],
        "latency_s": round(totals["latency_s"], 4),
        "answer_probability": answers[-1]["features"].get("answer_probability") if answers
        else None,
        "verbalized_mean": stated[-1] if stated else None,
        **({"meta": example.meta} if example.meta else {}),
        "steps": reply.steps, "calls": reply.calls, "cut_steps": reply.cut_steps,
    }


def run_step_trace(writer: Writer, task, out: str | Path, *, split: str | None = None,
                   limit: int | None = None, max_steps: int = 12,
                   generation: GenerationConfig = GenerationConfig(),
                   delimiters: tuple[str, ...] = DELIMITERS, progress=print) -> list[dict]:
    """The SLM writes every question of `task` step by step, keeping every step; one row per
    question appended to `out` as it finishes (run again to resume). These tables are what the
    routers are fitted on (training split) and swept on (test split)."""
    split = split or task.default_split
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] \
        if out.exists() else []
    done_ids = {row["id"] for row in done}
    # Threshold 0 and no switch allowed: the SLM keeps every step it writes.
    loop = StepRouter(writer, writer, 0.0, StepConfig(max_switches=0, max_steps=max_steps,
                                                      delimiters=tuple(delimiters)),
                      generation, router=ThresholdRouter())
    todo = [e for e in task.examples(split, limit) if e.id not in done_ids]
    start, rows = time.perf_counter(), []
    for number, example in enumerate(todo, 1):
        reply = loop.answer(example.question, task.hint)
        row = slm_step_row(example, task, split, writer.model.name, reply)
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        rows.append(row)
        if progress:
            progress(f"{task.name}/{split} {number}/{len(todo)} "
                     f"{time.perf_counter() - start:.0f}s")
    wanted = {e.id for e in task.examples(split, limit)}
    return [row for row in done + rows if row["id"] in wanted]


def read_step_trace(path: str | Path) -> list[dict]:
    """The rows of an SLM step trace; a ValueError naming the file when they are not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"step trace {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("steps"), list):
            raise ValueError(f"{path}, line {number}: a step trace row needs a 'steps' list")
        rows.append(row)
    if not rows:
        raise ValueError(f"step trace {path} has no rows")
    return rows


# ------------------------------------------------------------------------- the cascade's side

def step_config(data: dict) -> StepConfig | None:
    """The step config a cascade config's `routing` and `step` keys describe (None: question
    level, the default)."""
    routing = data.get("routing", "question")
    if routing not in ("question", "step"):
        raise ValueError(f"unknown routing {routing!r}: 'question' (the default) or 'step'")
    if routing == "question":
        if data.get("step"):
            raise ValueError("a 'step' object needs \"routing\": \"step\"")
        return None
    if data.get("step") is not None and not isinstance(data["step"], dict):
        raise ValueError("'step' must be a JSON object of step options")
    return StepConfig.from_dict(data.get("step"))


def _router_for(cascade) -> StepRouter:
    slm, llm = cascade.tiers[0], cascade.tiers[-1]
    return StepRouter(Writer(slm.model, slm.price), Writer(llm.model, llm.price), slm.threshold,
                      cascade.step, cascade.generation)


def _cascade_result(cascade, question: str, reply: StepReply):
    """The step-routed reply as the cascade's result: one final step whose writer is the model
    that wrote the reply's last step, priced with every call of both models; `routed` holds
    who wrote each step."""
    from corea.cascade import CascadeResult, TierStep
    from corea.protocol import parse_reply

    totals = reply.totals()
    last = reply.steps[-1]["model"] if reply.steps else cascade.tiers[0].model.name
    tier = 2 if last == cascade.tiers[-1].model.name and last != cascade.tiers[0].model.name \
        else 1
    parsed = parse_reply(reply.text)
    generation = Generation(reply.text, totals["prompt_tokens"], totals["completion_tokens"],
                            totals["latency_s"])
    step = TierStep(tier, last, generation, parsed, totals["cost"], "final",
                    cascade.tiers[0].threshold, "step", parsed.confidence)
    return CascadeResult(question.strip(), [step], routed=reply)


def step_answer_batch(cascade, questions: list[str], *, hint: str | None = None,
                      golds: list[str] | None = None, checker: str = "numeric") -> list:
    from corea.checking import is_correct

    router = _router_for(cascade)
    results = [_cascade_result(cascade, q, router.answer(q, hint)) for q in questions]
    if golds is not None:
        for result, gold in zip(results, golds):
            result.correct = is_correct(result.answer, gold, checker)
    return results


def step_events(cascade, question: str, *, hint: str | None = None):
    """Stream a step-routed answer: a `route_step` event per kept step (its writer, text and
    score; an LLM step also carries the SLM draft it replaced), then `step` and `done` as the
    question-level stream ends."""
    import queue
    import threading

    router = _router_for(cascade)
    found: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["reply"] = router.answer(question, hint, on_step=lambda step: found.put(step))
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error
        finally:
            found.put(None)

    start = time.perf_counter()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    text = ""
    while (step := found.get()) is not None:
        text += step["text"]
        yield {"type": "route_step", "step": step, "text": text}
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    result = _cascade_result(cascade, question, outcome["reply"])
    yield {"type": "step", "step": result.steps[0]}
    yield {"type": "done", "result": result, "wall_s": time.perf_counter() - start}
