"""The options of a GRPO calibration run: one dataclass, each field with its help text.

A run reads a YAML file (training/configs/*.yaml) and then `--key value` overrides; an unknown key,
a wrong type or an impossible value is an error before anything loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.rewards import CONFIDENCE_REWARDS


def option(default, help: str, **kwargs):  # noqa: A002 - mirrors argparse
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    # model
    model: str = option("smollm2", "the SLM to train: an embedded name, a local checkpoint, a Hub "
                                   "id, or a .gguf file (converted once to a trainable copy)")
    trust_remote_code: bool = option(False, "allow model code from the Hub (off unless you ask)")
    # data
    tasks: list[str] = option(["arith-1", "arith-2", "arith-3"],
                              "training tasks: built-in names (their train split), a "
                              ".jsonl/.json/.csv file, or hub:owner/name")
    train_size: int = option(512, "questions taken from each task")
    curriculum: bool = option(True, "order questions easy first (by task order, then level) "
                                    "instead of shuffling")
    question_field: str = option("question", "column of the question, for file/Hub tasks")
    answer_field: str = option("answer", "column of the gold answer, for file/Hub tasks")
    checker: str = option("numeric", "answer checker for file/Hub tasks: numeric, yesno, "
                                     "choice, exact")
    few_shot: bool = option(True, "include corea's two worked examples in each prompt, as served")
    start_adapter: str = option("", "go on training this adapter directory (an earlier stage's "
                                    "output, e.g. runs/mix-sft/adapter) instead of a fresh LoRA")
    # competence stage (python -m training sft; see training/sft.py)
    sft_arith_per_level: int = option(300, "worked solutions per level of the generated arith-mix "
                                           "training problems (levels 1-5)")
    sft_gsm8k: int = option(500, "worked GSM8K train solutions (calculator notes "
                                  "removed; with sft_programs, their calculations as programs)")
    sft_epochs: float = option(1.0, "passes over the worked solutions")
    sft_learning_rate: float = option(5e-4, "peak learning rate of the competence stage")
    sft_batch_size: int = option(8, "worked solutions per optimizer step")
    sft_confidence_from: str = option("", "a trace table of the start model on training-split "
                                          "questions (python -m corea trace --split train): each "
                                          "worked solution then ends with a confidence line, the "
                                          "model's smoothed share right in its group there "
                                          "(arith-mix level, or task); empty: no confidence line")
    sft_replies_from: str = option("", "a trace table of the start model on training-split "
                                       "questions: its own replies become targets too "
                                       "(self-distillation: what it says without notes, it "
                                       "learns to say with them)")
    sft_notes_from: str = option("", "a strategy file (python -m corea memory export): a share "
                                     "of the prompts get the nearest strategies as the memory's "
                                     "quoted notes, so the model learns to read them")
    sft_programs: bool = option(False, "targets are programs (served as program:<adapter>): the "
                                       "generated arith-mix problems' own programs (and, with "
                                       "sft_gsm8k, GSM8K train solutions' calculations as "
                                       "programs); the notes a "
                                       "share of prompts get are other training problems' "
                                       "programs, quoted with their problems as the memory's "
                                       "program mode quotes them")
    sft_made_up_share: float = option(0.0, "with sft_programs: share of the prompts whose "
                                           "operations are told in made-up verbs, the same in "
                                           "their notes' problems, so that the notes must be "
                                           "read (training/made_up_words.py)")
    sft_rephrase_share: float = option(0.0, "with sft_programs: share of the other prompts whose "
                                            "generated problem, and its notes' problems, are told "
                                            "in other words (training/phrasings.py)")
    sft_notes_share: float = option(0.5, "share of the prompts that get notes")
    sft_notes_top_k: int = option(2, "notes per prompt, at most (the memory's top_k)")
    sft_notes_min_similarity: float = option(0.5, "the memory's retrieval gate for notes")
    sft_lora: bool = option(True, "train a LoRA adapter (ships in ~20 MB); false: full "
                                  "fine-tuning (a whole model checkpoint)")
    # supervised warm-up (format only; see training/warmup.py)
    warmup_steps: int = option(0, "supervised steps on worked solutions of generated training "
                                  "problems before GRPO, all with the same confidence (0 = none)")
    warmup_size: int = option(256, "worked solutions made for the warm-up")
    warmup_learning_rate: float = option(2e-4, "learning rate of the warm-up")
    warmup_confidence: float = option(0.5, "the one confidence every warm-up reply states")
    # self-labelled confidence (see training/self_label.py)
    self_label_size: int = option(0, "problems per task whose sampled replies, graded, teach the "
                                     "confidence before GRPO (0 = no such stage)")
    self_label_tasks: list[str] = option([], "tasks those problems come from (default: tasks); "
                                             "`name:N` takes N problems of that task")
    self_label_samples: int = option(4, "replies sampled per problem; the target confidence is "
                                        "(right + 0.5) / (samples + 1)")
    self_label_max_new_tokens: int = option(160, "longest sampled reply in tokens")
    self_label_epochs: int = option(2, "passes over the labelled replies")
    self_label_learning_rate: float = option(2e-4, "learning rate of the stage")
    self_label_balance: bool = option(True, "drop labelled replies from the commonest confidence "
                                            "targets so right and wrong replies are both well "
                                            "represented (at most twice the rarest bucket)")
    self_label_replies_trained: int = option(0, "sampled replies per problem used as training "
                                                "rows, each labelled with the problem's share "
                                                "(0 = all of them)")
    self_label_full_reply: bool = option(False, "train on the whole sampled reply, its stated "
                                                "value replaced by the target (loss on all of "
                                                "it), rather than on the value alone: the reply "
                                                "anchors the model's reasoning and format, which "
                                                "a value-only loss lets drift")
    self_label_pool_weight: float = option(0.0, "pool a problem's sampled replies with this many "
                                                 "pseudo-replies right at the share of its task "
                                                 "and level when setting its target, (right + "
                                                 "w * share) / (samples + w) (0 = its own "
                                                 "replies alone)")
    self_label_value_rows: bool = option(False, "with self_label_full_reply: also train each "
                                                "reply with the loss on its value alone, which "
                                                "is too small a part of a whole reply's loss to "
                                                "be learned from it")
    self_label_batch_size: int = option(16, "problems sampled together (each `samples` times)")
    self_label_max_minutes: float = option(0.0, "stop sampling once the stage has sampled this "
                                                "many minutes (over all its invocations) and train "
                                                "on the problems sampled so far (0 = no limit)")
    self_label_sample_only: bool = option(False, "sample and grade the replies, then stop: a "
                                                 "later self-label run whose output_dir holds a "
                                                 "copy of them trains (sampling from one model, "
                                                 "training from another)")
    self_label_max_rows: int = option(0, "train on at most this many labelled replies, drawn "
                                         "evenly over the targets (0 = all); every problem "
                                         "is still sampled and graded")
    # reward
    confidence_reward: str = option("brier", "brier: 1-(correct-c)^2 (RLCR); corea_l1: "
                                             "-|c - p_group| (COREA)")
    format_weight: float = option(0.5, "weight of the format reward")
    correct_weight: float = option(1.0, "weight of the correctness reward")
    confidence_weight: float = option(0.5, "weight of the confidence reward")
    # GRPO
    max_steps: int = option(200, "optimizer steps")
    learning_rate: float = option(5e-5, "peak learning rate (LoRA)")
    per_device_train_batch_size: int = option(8, "completions per device per step; a multiple "
                                                 "of num_generations")
    gradient_accumulation_steps: int = option(1, "steps accumulated per optimizer update")
    num_generations: int = option(4, "completions sampled per prompt (the GRPO group)")
    max_completion_length: int = option(128, "longest completion in tokens")
    temperature: float = option(0.7, "sampling temperature of the rollouts")
    beta: float = option(0.0, "KL penalty against the reference model (0 = none, as in RLCR)")
    scale_rewards: str = option("none", "advantage scaling: none (Dr. GRPO, RLCR), group, batch")
    loss_type: str = option("dr_grpo", "TRL loss: grpo, dr_grpo, dapo, bnpo")
    use_vllm: bool = option(False, "generate rollouts with vLLM (GPU only)")
    # LoRA
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: str = option("all-linear", "modules that get adapters")
    # runtime
    output_dir: str = option("runs/grpo", "where checkpoints, the adapter, logs and plots go")
    device: str = option("auto", "auto (CUDA when present), cpu or cuda")
    bf16: bool = option(False, "bfloat16 training (GPU)")
    seed: int = option(0, "random seed")
    logging_steps: int = option(1, "log every N steps")
    save_steps: int = option(25, "checkpoint every N steps (resume picks the last one)")
    resume: bool = option(True, "continue from the last checkpoint in output_dir if there is one")
    # evaluation before and after training, on held-out questions
    eval_tasks: list[str] = option(["arith-1", "arith-2", "arith-3"],
                                   "held-out tasks (their test split) scored before and after")
    eval_limit: int = option(40, "questions per eval task (0 = no evaluation)")
    eval_max_new_tokens: int = option(160, "reply length at evaluation")

    def __post_init__(self):
        if self.confidence_reward not in CONFIDENCE_REWARDS:
            raise ValueError(f"confidence_reward must be one of {', '.join(CONFIDENCE_REWARDS)}")
        if self.scale_rewards not in ("none", "group", "batch"):
            raise ValueError("scale_rewards must be none, group or batch")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError("device must be auto, cpu or cuda")
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2: GRPO compares a group")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"per_device_train_batch_size ({self.per_device_train_batch_size}) must "
                             f"be a multiple of num_generations ({self.num_generations})")
        for name in ("max_steps", "train_size", "max_completion_length", "save_steps",
                     "logging_steps", "gradient_accumulation_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_confidence <= 1.0:
            raise ValueError("warmup_steps cannot be negative; warmup_confidence lies in [0, 1]")
        if self.self_label_size < 0 or self.self_label_samples < 2 and self.self_label_size:
            raise ValueError("self_label_size cannot be negative, and self_label_samples must be "
                             "at least 2 (a share of right replies needs several)")
        for name in ("sft_arith_per_level", "sft_gsm8k"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
        if self.sft_epochs <= 0 or self.sft_batch_size < 1:
            raise ValueError("sft_epochs must be positive and sft_batch_size at least 1")
        if not 0.0 <= self.sft_notes_share <= 1.0 or self.sft_notes_top_k < 1:
            raise ValueError("sft_notes_share lies in [0, 1] and sft_notes_top_k is at least 1")
        if not 0.0 <= self.sft_rephrase_share <= 1.0:
            raise ValueError("sft_rephrase_share lies in [0, 1]")
        if not 0.0 <= self.sft_made_up_share <= 1.0 - self.sft_notes_share:
            raise ValueError("sft_made_up_share lies in [0, 1 - sft_notes_share]: its prompts "
                             "are neither the plain ones nor those with notes in plain words")
        if (self.self_label_max_rows < 0 or self.self_label_max_minutes < 0
                or self.self_label_pool_weight < 0):
            raise ValueError("self_label_max_rows, self_label_max_minutes and "
                             "self_label_pool_weight cannot be negative")
        if self.self_label_replies_trained < 0 or self.self_label_batch_size < 1:
            raise ValueError("self_label_replies_trained cannot be negative and "
                             "self_label_batch_size must be at least 1")
        if self.eval_limit < 0:
            raise ValueError("eval_limit cannot be negative")
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one training task")

    def check_inputs(self) -> None:
        """Files the run reads, checked when it starts (before any model loads) rather than when
        the config is read, so a config can be loaded and inspected before its inputs exist."""
        if self.start_adapter and not (Path(self.start_adapter) / "adapter_config.json").is_file():
            raise ValueError(f"start_adapter {self.start_adapter!r} is not an adapter directory "
                             "(no adapter_config.json): run the earlier stage first")
        for name in ("sft_confidence_from", "sft_replies_from"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name} {path!r} does not exist: trace the start model on "
                                 "training questions first (python -m corea trace --split train)")
        if self.sft_notes_from and not Path(self.sft_notes_from).is_file():
            raise ValueError(f"sft_notes_from {self.sft_notes_from!r} does not exist: fill a store "
                             "(python -m corea memory learn) and export it")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _convert(name: str, raw):
    kind = typing.get_type_hints(TrainConfig)[name]
    if isinstance(raw, str):
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"--{name} takes true or false, not {raw!r}")
        if typing.get_origin(kind) is list:
            return [part.strip() for part in raw.split(",") if part.strip()]
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"--{name} takes a {kind.__name__}, not {raw!r}") from None
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    expected = list if typing.get_origin(kind) is list else kind
    if not isinstance(raw, expected) or (expected is int and isinstance(raw, bool)):
        raise ValueError(f"{name} takes a {getattr(expected, '__name__', expected)}, "
                         f"not {type(raw).__name__} {raw!r}")
    return raw


def _check_key(name: str) -> str:
    key = name.replace("-", "_")
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown option {name!r}{hint}; `python -m training grpo --help` lists them")
    return key


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A config from a YAML file (or the defaults) and `--key value` / `--key=value` overrides."""
    values: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read config {path}: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must be a mapping of option: value")
        for name, raw in data.items():
            key = _check_key(str(name))
            values[key] = _convert(key, raw)
    for name, raw in override_pairs(overrides or []):
        key = _check_key(name)
        values[key] = _convert(key, raw)
    return TrainConfig(**values)


def override_pairs(items: list[str]) -> list[tuple[str, str]]:
    """(name, value) of each `--key value` or `--key=value` in `items`, in order."""
    items, pairs = list(items), []
    while items:
        token = items.pop(0)
        if not token.startswith("--"):
            raise ValueError(f"options are `--key value` pairs, not {token!r}")
        name, equals, raw = token[2:].partition("=")
        if not equals:
            if not items:
                raise ValueError(f"--{name} needs a value")
            raw = items.pop(0)
        pairs.append((name, raw))
    return pairs


def options_help() -> str:
    lines = []
    for name, spec in FIELDS.items():
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING \
            else spec.default
        lines.append(f"  --{name:<28} {spec.metadata['help']} (default: {default})")
    return "\n".join(lines)
