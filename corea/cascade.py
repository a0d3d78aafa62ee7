"""The cascade: tiers of models from cheap to expensive, a threshold per tier but the last.

A question goes to tier 1; if its confidence is below tier 1's threshold it goes on to tier 2, and
so on; the last tier's answer is final. A question pays for every tier it visited. A tier's
confidence is the one its reply states (the default), or a token signal of the reply: the
probability of the answer's tokens or the first answer token's margin (`corea.signals`).

A cascade is described by a JSON config (what the app's threshold tuning exports and what
`python -m corea ask/serve --config` read)::

    {"tiers": [{"model": "smollm2", "threshold": 0.8, "signal": "verbalized"},
               {"model": "qwen", "price": {"input": 0.15, "output": 0.46}}],
     "generation": {"max_new_tokens": 320}}

`"routing": "step"` (with an optional `"step"` object, `corea.steps.StepConfig`) routes each
reasoning step instead of the whole question: the SLM drafts every step and keeps it when the
step router's score reaches tier 1's threshold; otherwise the LLM writes on from the text so far.
Question-level routing is the default.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from corea import embedded
from corea.checking import is_correct
from corea.costs import Price, default_price, resolve_price
from corea.memory import MemoryConfig, Recall, StrategyMemory
from corea.steps import StepConfig, step_answer_batch, step_config, step_events
from corea.models import Generation, GenerationConfig, Model, get_model
from corea.protocol import ParsedReply, build_messages, parse_reply
from corea.signals import TOKEN_SIGNALS, check_runtime_signal, generation_confidence


@dataclass(frozen=True)
class TierSpec:
    model: str
    threshold: float | None = None  # None on the last tier
    price: Price | None = None
    adapter: str | None = None
    backend: str = "auto"
    signal: str = "verbalized"  # what the threshold is compared with (corea.signals)
    max_new_tokens: int | None = None  # this tier's token budget (at most the cascade's)

    def __post_init__(self):
        check_runtime_signal(self.signal)
        if self.max_new_tokens is not None and (
                not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ValueError(f"tier {self.model}: max_new_tokens must be a whole number >= 1")

    def to_dict(self) -> dict:
        data = {"model": self.model}
        if self.threshold is not None:
            data["threshold"] = self.threshold
        if self.price is not None:
            data["price"] = self.price.to_dict()
        if self.adapter:
            data["adapter"] = self.adapter
        if self.backend != "auto":
            data["backend"] = self.backend
        if self.signal != "verbalized":
            data["signal"] = self.signal
        if self.max_new_tokens is not None:
            data["max_new_tokens"] = self.max_new_tokens
        return data


@dataclass(frozen=True)
class CascadeConfig:
    tiers: tuple[TierSpec, ...]
    # A cascade reads a reply up to its Confidence line, so it stops each reply there (and cuts
    # one that loops): corea.stopping.
    generation: GenerationConfig = GenerationConfig(stop_when_done=True)
    memory: MemoryConfig | None = None  # a strategy memory the SLM's prompt draws on
    step: StepConfig | None = None  # "routing": "step": routed step by step (corea.steps)

    def __post_init__(self):
        if len(self.tiers) < 2:
            raise ValueError("a cascade needs at least two tiers")
        for index, tier in enumerate(self.tiers[:-1], start=1):
            if tier.threshold is None or not 0.0 <= tier.threshold <= 1.0:
                raise ValueError(f"tier {index} ({tier.model}) needs a threshold in [0, 1]")
        if self.step is not None and len(self.tiers) != 2:
            raise ValueError("step routing takes two tiers: the SLM that drafts each step and "
                             "the LLM that takes over")

    @property
    def routing(self) -> str:
        return "step" if self.step is not None else "question"

    def to_dict(self) -> dict:
        return {"tiers": [tier.to_dict() for tier in self.tiers],
                "generation": asdict(self.generation),
                **({"memory": self.memory.to_dict()} if self.memory else {}),
                **({"routing": "step", "step": self.step.to_dict()} if self.step else {})}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict) -> "CascadeConfig":
        if not isinstance(data, dict) or not isinstance(data.get("tiers"), list):
            raise ValueError("a cascade config is a JSON object with a list of 'tiers'")
        tiers = []
        for index, tier in enumerate(data["tiers"], start=1):
            if not isinstance(tier, dict) or not isinstance(tier.get("model"), str):
                raise ValueError(f"tier {index} needs a 'model' name")
            tiers.append(TierSpec(
                model=tier["model"],
                threshold=float(tier["threshold"]) if tier.get("threshold") is not None else None,
                price=Price.from_dict(tier["price"]) if tier.get("price") else None,
                adapter=tier.get("adapter"), backend=tier.get("backend", "auto"),
                signal=tier.get("signal", "verbalized"),
                max_new_tokens=tier.get("max_new_tokens"),
            ))
        generation = data.get("generation") or {}
        known = GenerationConfig.__dataclass_fields__
        unknown = set(generation) - set(known)
        if unknown:
            raise ValueError(f"unknown generation option(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(known)}")
        memory = MemoryConfig.from_dict(data["memory"]) if data.get("memory") else None
        generation = GenerationConfig(**{"stop_when_done": True, **generation})
        return cls(tuple(tiers), generation, memory, step_config(data))

    @classmethod
    def load(cls, path: str | Path) -> "CascadeConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read cascade config {path}: {error}") from error
        return cls.from_dict(data)


def tuned_config(slm_model: str, llm_model: str, threshold: float,
                 signal: str = "verbalized") -> CascadeConfig:
    """The two-tier cascade a threshold tuned on trace tables describes: the models the tables
    name (a shipped adapter by its own name), their compute-based prices, the signal tuned on."""
    return CascadeConfig((
        TierSpec(embedded.spec_for(slm_model), threshold, price=default_price(slm_model),
                 signal=signal),
        TierSpec(embedded.spec_for(llm_model), price=default_price(llm_model)),
    ))


@dataclass
class Tier:
    model: Model
    threshold: float | None
    price: Price
    signal: str = "verbalized"
    max_new_tokens: int | None = None  # this tier's token budget (at most the cascade's)

    def __post_init__(self):
        if check_runtime_signal(self.signal) in TOKEN_SIGNALS and not getattr(
                self.model, "logprobs", False):
            raise ValueError(f"{self.model.name} cannot defer on {self.signal}: load it with "
                             "token log-probabilities (logprobs=True)")


@dataclass
class TierStep:
    """What one tier did with one question."""

    tier: int
    model: str
    generation: Generation
    parsed: ParsedReply
    cost: float
    decision: str  # "kept", "deferred" or "final"
    threshold: float | None
    signal: str = "verbalized"
    confidence: float | None = None  # the signal's value; None when unreadable (counts as 0)

    @property
    def deferral_confidence(self) -> float:
        return self.confidence if self.confidence is not None else 0.0


@dataclass
class CascadeResult:
    question: str
    steps: list[TierStep] = field(default_factory=list)
    correct: bool | None = None  # set when a gold answer was given
    strategies: list[int] = field(default_factory=list)  # memory's strategies the SLM was given
    memory_note: str | None = None  # why memory could not be used or written, when it could not
    lesson: object | None = None  # what memory learned from a deferral (corea.memory.Lesson)
    memory_cost: float = 0.0  # the LLM's second call that wrote a strategy
    routed: object | None = None  # step routing's reply: who wrote each step (corea.steps)

    @property
    def answer(self) -> str | None:
        return self.steps[-1].parsed.answer if self.steps else None

    @property
    def answered_by(self) -> str | None:
        return self.steps[-1].model if self.steps else None

    @property
    def cost(self) -> float:
        return sum(step.cost for step in self.steps) + self.memory_cost

    @property
    def latency_s(self) -> float:
        return sum(step.generation.latency_s for step in self.steps)


class Cascade:
    def __init__(self, tiers: list[Tier], generation: GenerationConfig = GenerationConfig(),
                 memory: StrategyMemory | None = None, step: StepConfig | None = None):
        if len(tiers) < 2:
            raise ValueError("a cascade needs at least two tiers")
        self.tiers = tiers
        self.generation = generation
        self.memory = memory
        self.step = step  # step-level routing: answers come from corea.steps

    @classmethod
    def from_config(cls, config: CascadeConfig, *, token: str | None = None,
                    price_table: dict[str, Price] | None = None,
                    loader: Callable[..., Model] = get_model) -> "Cascade":
        # Opened first: a store that is not one fails before any model is loaded.
        memory = StrategyMemory(config.memory) if config.memory else None
        tiers = []
        for spec in config.tiers:
            # Step routing reads the SLM's token probabilities for every step it drafts.
            reads_tokens = spec.signal in TOKEN_SIGNALS or (config.step and spec is config.tiers[0])
            extra = {"logprobs": True} if reads_tokens else {}
            model = loader(spec.model, adapter=spec.adapter, backend=spec.backend, token=token,
                           **extra)
            tiers.append(Tier(model, spec.threshold,
                              resolve_price(model.name, price_table, spec.price), spec.signal,
                              spec.max_new_tokens))
        return cls(tiers, config.generation, memory, config.step)

    def tier_generation(self, index: int, config: GenerationConfig | None = None
                        ) -> GenerationConfig:
        """The decoding settings of tier `index`: the cascade's (or a request's), within the
        tier's own token budget."""
        config = config or self.generation
        budget = self.tiers[index].max_new_tokens
        if budget is not None and budget < config.max_new_tokens:
            config = replace(config, max_new_tokens=budget)
        return config

    def decide(self, index: int, generation: Generation) -> TierStep:
        """Tier `index`'s step for a generation: parsed, priced, kept or deferred."""
        tier = self.tiers[index]
        parsed = parse_reply(generation.text)
        confidence = generation_confidence(tier.signal, parsed, generation.text,
                                           generation.token_logprobs)
        mapped = tier.model.confidence_map
        if mapped is not None and mapped.signal == tier.signal:  # a trained model's Platt map
            confidence = mapped(confidence)
        if generation.finish_reason == "repetition":  # cut while looping: a format failure
            parsed, confidence = replace(parsed, format_ok=False), None
        if index == len(self.tiers) - 1:
            decision = "final"
        else:
            decision = "kept" if (confidence or 0.0) >= tier.threshold else "deferred"
        return TierStep(index + 1, tier.model.name, generation, parsed,
                        tier.price.cost(generation.prompt_tokens, generation.completion_tokens),
                        decision, tier.threshold, tier.signal, confidence)

    def answer_batch(self, questions: list[str], *, hint: str | None = None,
                     golds: list[str] | None = None, checker: str = "numeric"
                     ) -> list[CascadeResult]:
        """Answer many questions; each tier sees, as one batch, the questions deferred to it."""
        if self.step is not None:
            return step_answer_batch(self, questions, hint=hint, golds=golds, checker=checker)
        recalls = self.recall(questions)
        on_doubt = self.consults_on_doubt
        results = [self._with_recall(CascadeResult(q.strip()), recall, given=not on_doubt)
                   for q, recall in zip(questions, recalls)]
        pending = list(range(len(questions)))
        for index, tier in enumerate(self.tiers):
            if not pending:
                break
            generations = tier.model.generate(
                [self.tier_messages(index, questions[i], hint, recalls[i], notes=not on_doubt)
                 for i in pending], self.tier_generation(index))
            still_pending = self._decide_all(index, pending, generations, results)
            retry = [i for i in still_pending if recalls[i] is not None and recalls[i].strategies] \
                if index == 0 and on_doubt else []
            if retry:  # in doubt: asked again, with the notes
                generations = tier.model.generate(
                    [self.tier_messages(0, questions[i], hint, recalls[i]) for i in retry],
                    self.tier_generation(0))
                for i in retry:
                    results[i].strategies = recalls[i].ids
                again = set(self._decide_all(0, retry, generations, results))
                still_pending = [i for i in still_pending if i not in retry or i in again]
            pending = still_pending
        for result in results:
            self.learn(result)
        if golds is not None:
            for result, gold in zip(results, golds):
                result.correct = is_correct(result.answer, gold, checker)
        return results

    def _decide_all(self, index: int, pending: list[int], generations: list[Generation],
                    results: list[CascadeResult]) -> list[int]:
        """Tier `index`'s step for each pending question; the ones it defers."""
        deferred = []
        for question_index, generation in zip(pending, generations):
            step = self.decide(index, generation)
            results[question_index].steps.append(step)
            if step.decision == "deferred":
                deferred.append(question_index)
        return deferred

    def answer(self, question: str, *, hint: str | None = None) -> CascadeResult:
        return self.answer_batch([question], hint=hint)[0]

    def events(self, question: str, *, hint: str | None = None) -> Iterator[dict]:
        """Stream one question through the tiers: `delta` events while a tier writes, a `step`
        event when it has decided, and a `done` event with the final result."""
        if self.step is not None:
            yield from step_events(self, question, hint=hint)
            return
        recall = self.recall([question])[0]
        on_doubt = self.consults_on_doubt
        result = self._with_recall(CascadeResult(question.strip()), recall, given=not on_doubt)
        if recall is not None and (not on_doubt or recall.note):
            yield {"type": "memory", "recall": recall}
        start = time.perf_counter()
        for index, with_notes in self.tier_attempts(recall):
            tier = self.tiers[index]
            if index == 0 and with_notes and on_doubt:
                result.strategies = recall.ids
                yield {"type": "memory", "recall": recall}
            yield {"type": "tier_start", "tier": index + 1, "model": tier.model.name}
            final = None
            messages = self.tier_messages(index, question, hint, recall, notes=with_notes)
            for generation in tier.model.stream(messages, self.tier_generation(index)):
                if generation.done:
                    final = generation
                else:
                    yield {"type": "delta", "tier": index + 1, "text": generation.text}
            step = self.decide(index, final)
            result.steps.append(step)
            yield {"type": "step", "step": step}
            if step.decision != "deferred":
                break
        self.learn(result)
        yield {"type": "done", "result": result, "wall_s": time.perf_counter() - start}

    # -- strategy memory (corea.memory): retrieved strategies enter the SLM's prompt as quoted
    # data; the LLM's answer to a deferred question teaches the store.
    def recall(self, questions: list[str]) -> list[Recall | None]:
        if self.memory is None:
            return [None] * len(questions)
        return self.memory.recall(questions)

    def tier_attempts(self, recall: Recall | None) -> list[tuple[int, bool]]:
        """(tier index, with memory's notes) in the order a question meets them until one keeps
        its answer: consulting on doubt, the SLM is asked again with the notes before the next
        tier, when memory recalled any."""
        on_doubt = self.consults_on_doubt
        attempts = [(index, not on_doubt) for index in range(len(self.tiers))]
        if on_doubt and recall is not None and recall.strategies:
            attempts.insert(1, (0, True))
        return attempts

    @property
    def consults_on_doubt(self) -> bool:
        """Whether the SLM reads memory's notes only when it would defer without them."""
        return self.memory is not None and self.memory.config.consult == "on_doubt"

    def tier_messages(self, index: int, question: str, hint: str | None,
                      recall: Recall | None, notes: bool = True) -> list[dict]:
        """Tier `index`'s messages; the SLM's carry memory's notes unless `notes` is False."""
        few_shot = self.tiers[index].model.few_shot
        if self.memory is None or (index == 0 and not notes):
            return build_messages(question, hint=hint, few_shot=few_shot)
        if index == 0:
            return self.memory.slm_messages(question, hint, recall or Recall(), few_shot)
        if index == len(self.tiers) - 1:
            return self.memory.llm_messages(question, hint, few_shot)
        return build_messages(question, hint=hint, few_shot=few_shot)

    @staticmethod
    def _with_recall(result: CascadeResult, recall: Recall | None,
                     given: bool = True) -> CascadeResult:
        """`result` noting what memory recalled; its strategies count as given to the SLM when
        they go into its first prompt (`given`), else once it is asked again with them."""
        if recall is not None:
            result.memory_note = recall.note
            if given:
                result.strategies = recall.ids
        return result

    def learn(self, result: CascadeResult) -> None:
        """After the last tier answered a deferred question, memory may store a strategy."""
        last = result.steps[-1] if result.steps else None
        if self.memory is None or last is None or len(result.steps) < 2 \
                or last.tier != len(self.tiers):
            return
        tier = self.tiers[-1]
        lesson = self.memory.learn(result.question, tier.model, last.parsed,
                                   last.generation.text, self.generation, tier.price)
        result.lesson, result.memory_cost = lesson, result.memory_cost + lesson.cost
        if lesson.note:
            result.memory_note = "; ".join(filter(None, [result.memory_note, lesson.note]))
