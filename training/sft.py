"""The competence stage: supervised fine-tuning on worked solutions (TRL's SFTTrainer).

    python -m training sft --config training/configs/cpu-sft.yaml

The small model is first made right on easy questions. Its targets are worked solutions in the
answer format, from two sources: generated arith-mix training problems (levels 1-5, the
generator's own equations written out) and GSM8K train solutions with their calculator notes
(`<<48/2=24>>`) removed. The target ends with `Answer: N`. A constant confidence taught here would
have to be unlearned, so by default there is no confidence line. With `sft_confidence_from` (a
trace table of the start model on training questions) each target ends with a confidence line
whose value is *measured*: the start model's smoothed share right in the question's group (its
arith-mix level, or its task). The model so learns where the line goes and a first, honest value
for it, which the self-label stage then refines per question. Checkpoints every `save_steps`;
running the command again resumes from the last one.

Two options serve the strategy memory (`training/configs/cpu-memory-sft.yaml`): with
`sft_replies_from` the start model's own replies to training questions are targets too
(self-distillation), and with `sft_notes_from` a share of the prompts carry the strategies the
memory would retrieve for their questions, quoted as the cascade quotes them: the model learns to
answer with notes as it does without.

With `sft_programs` (`training/configs/cpu-program-sft-made-up.yaml`) the model learns to answer
by program instead, served as `program:<adapter>`: the targets are the generated problems' own
programs (with `sft_gsm8k`, also GSM8K train solutions whose calculator notes make a program that
computes their answer, training/gsm8k_programs.py; `cpu-program-sft-broad.yaml`), a share of
the prompts carry the programs of the nearest *other* training problems, quoted with their
problems as the memory's `program` mode quotes the LLM's programs; with `sft_made_up_share` a
share tell their operations in made-up verbs that only those notes explain, and with
`sft_rephrase_share` a share of the others tell them in other phrasings (training/phrasings.py).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

from corea import arithmetic, embedded
from corea.memory import Strategy, get_embedder, read_strategy_rows, slm_messages
from corea.program import one_line, program_messages
from corea.protocol import format_reply
from corea.tasks import ARITH_MIX_LEVELS, HINTS, get_task, gsm8k_rows

from training import made_up_words, phrasings
from training.gsm8k_programs import gsm8k_program
from training.config import TrainConfig
from training.records import begin_stage, save_run, timed

_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


def gsm8k_worked_solution(solution: str) -> tuple[str, str]:
    """(reasoning, answer) of a GSM8K solution: calculator notes removed, `#### N` split off."""
    reasoning, _, answer = solution.rpartition("####")
    reasoning = _CALCULATOR_NOTE.sub("", reasoning).strip()
    return reasoning, answer.strip().replace(",", "")


def answer_only_reply(reasoning: str, answer: str) -> str:
    """A reply in corea's format up to its answer: reasoning, then `Answer: N`; no confidence."""
    return f"{reasoning.strip()}\nAnswer: {answer}"


def confidence_group(task: str, level: int | None) -> str:
    """The group whose measured accuracy a target's confidence states: the arith-mix level for
    generated problems (any arith task), else the task."""
    return f"level {level}" if level is not None else task


def measured_confidence(path: str | Path) -> dict[str, float]:
    """Smoothed share right, (right + 0.5) / (n + 1), of each group in a trace table of the
    start model. Held-out rows are refused: a test question must not set a training target."""
    groups: dict[str, list[bool]] = {}
    for row in training_rows(path):
        level = (row.get("meta") or {}).get("level")
        groups.setdefault(confidence_group(row["task"], level), []).append(bool(row["correct"]))
    return {group: round((sum(right) + 0.5) / (len(right) + 1), 2)
            for group, right in groups.items()}


def sft_rows(config: TrainConfig) -> list[dict]:
    """Prompt/completion pairs, shuffled (seeded). Generated problems come from the train split
    only, so no arith-mix (or arith-N) test question is ever a target."""
    hint = HINTS["numeric"]
    measured = measured_confidence(config.sft_confidence_from) \
        if config.sft_confidence_from else None

    def target(reasoning: str, answer: str, group: str) -> str:
        if measured is None:
            return answer_only_reply(reasoning, answer)
        if group not in measured:
            raise ValueError(f"{config.sft_confidence_from} has no rows of {group}: its "
                             f"groups are {', '.join(sorted(measured))}")
        return format_reply(reasoning, answer, measured[group])

    if config.sft_programs:
        return program_rows(config, hint)
    items = []  # (question, hint, target reply)
    for level in ARITH_MIX_LEVELS:
        for problem in arithmetic.generate(level, "train", config.sft_arith_per_level,
                                           seed=config.seed + 1):
            items.append((problem.question, hint, target(
                problem.worked_solution(), str(problem.answer),
                confidence_group("arith-mix", level))))
    if config.sft_gsm8k:
        # From the end of the train split: the self-label and GRPO stages draw from its start.
        for row in gsm8k_rows("train")[-config.sft_gsm8k:]:
            reasoning, answer = gsm8k_worked_solution(row["answer"])
            items.append((row["question"], hint, target(reasoning, answer,
                                                        confidence_group("gsm8k", None))))
    if config.sft_replies_from:
        items.extend(own_replies(config.sft_replies_from))
    random.Random(config.seed).shuffle(items)
    _refuse_evaluation_questions([question for question, _, _ in items], config)
    notes = notes_for(items, read_strategy_rows(config.sft_notes_from), config) \
        if config.sft_notes_from else [[] for _ in items]
    return [{"prompt": slm_messages(question, hint, strategies, config.few_shot),
             "completion": [{"role": "assistant", "content": reply}]}
            for (question, hint, reply), strategies in zip(items, notes)]


def program_rows(config: TrainConfig, hint: str) -> list[dict]:
    """Program targets for generated training problems, prompts in the form a program model is
    asked in (corea.program): a share with the nearest other problems' programs as notes, and a
    share with the operations told in made-up verbs that only their notes explain
    (training/made_up_words.py), a share of the others told in other phrasings, their notes too
    (training/phrasings.py); the rest in the generator's words."""
    problems = [(problem.question, problem.program()) for level in ARITH_MIX_LEVELS
                for problem in arithmetic.generate(level, "train", config.sft_arith_per_level,
                                                   seed=config.seed + 1)]
    problems += gsm8k_programs(config.sft_gsm8k)
    random.Random(config.seed).shuffle(problems)
    _refuse_evaluation_questions([question for question, _ in problems], config)
    programs = {question: one_line(program) for question, program in problems}
    items = [(question, hint, f"```python\n{program}\n```") for question, program in problems]
    # The pool of notes is the problems themselves: their questions are embedded once.
    vectors = get_embedder().encode(list(programs))
    notes = notes_for(items, [{"question": q, "strategy": p} for q, p in programs.items()],
                      config, (vectors, vectors))
    made_up = made_up_prompts(items, notes, programs, vectors, config)
    rng = random.Random(config.seed + 4)
    rows = []
    for (question, _, reply), strategies, reworded in zip(items, notes, made_up):
        if reworded is not None:
            question, strategies = reworded
        elif (rng.random() < config.sft_rephrase_share
              and made_up_words.operations(question)):
            question, strategies = rephrased(question, strategies, phrasings.draw(rng))
        rows.append({"prompt": program_messages(slm_messages(question, hint, strategies, False,
                                                             with_problem=True)),
                     "completion": [{"role": "assistant", "content": reply}]})
    return rows


def gsm8k_programs(count: int) -> list[tuple[str, str]]:
    """(question, program) of the last `count` GSM8K train solutions that make a program
    (training/gsm8k_programs.py), from the end of the split as the prose targets are."""
    if not count:
        return []
    made = [(row["question"], gsm8k_program(row["answer"])) for row in gsm8k_rows("train")]
    return [(question, program) for question, program in made if program][-count:]


def rephrased(question: str, notes: list[Strategy], phrasing: dict[str, str]
              ) -> tuple[str, list[Strategy]]:
    """A generated problem and its notes' problems told in other words (training/phrasings.py),
    the same in all of them."""
    return (phrasings.rephrase(question, phrasing),
            [replace(note, question=phrasings.rephrase(note.question, phrasing)) for note in notes])


def made_up_prompts(items: list[tuple], notes: list[list[Strategy]], programs: dict[str, str],
                    vectors, config: TrainConfig) -> list[tuple[str, list[Strategy]] | None]:
    """For a seeded share of the prompts that got no notes, the question and notes told in
    made-up verbs: the nearest problems (`vectors`: the embeddings of `programs`' questions) that
    tell every operation the question tells."""
    if not config.sft_made_up_share:
        return [None] * len(items)
    questions = list(programs)
    index = {question: n for n, question in enumerate(questions)}
    rng = random.Random(config.seed + 3)
    share = config.sft_made_up_share / (1.0 - config.sft_notes_share)
    out = []
    for (question, _, _), noted in zip(items, notes):
        # Only generated problems tell their operations in the sentences made_up_words rewords.
        if noted or rng.random() >= share or not made_up_words.operations(question):
            out.append(None)
            continue
        scores = vectors @ vectors[index[question]]
        ranked = [questions[i] for i in sorted(range(len(questions)), key=lambda i: -scores[i])
                  if questions[i] != question]
        chosen = made_up_words.covering_notes(question, ranked, config.sft_notes_top_k)
        if chosen is None:
            out.append(None)
            continue
        verbs = made_up_words.made_up_verbs(rng)
        out.append((made_up_words.reword(question, verbs),
                    [Strategy(0, "", made_up_words.reword(problem, verbs), programs[problem],
                              None, "", 0.0, 0.0) for problem in chosen]))
    return out


def own_replies(path: str | Path) -> list[tuple[str, str | None, str]]:
    """(question, hint, reply) of each row of the start model's trace table on training
    questions: what it says without notes is what it should say with them."""
    return [(row["question"], get_task(row["task"]).hint, row["output"].strip())
            for row in training_rows(path)]


def training_rows(path: str | Path) -> list[dict]:
    """A trace table of the start model on training questions. Held-out rows are refused: a test
    question must not set a training target."""
    from corea.traces import read_trace

    rows = read_trace(path)
    for row in rows:
        if row.get("split") == "test":
            raise ValueError(f"{path} holds test-split rows ({row['id']}): trace the start model "
                             "on training questions (--split train)")
    return rows


def notes_for(items: list[tuple], pool: list[dict], config: TrainConfig, vectors=None
              ) -> list[list[Strategy]]:
    """For a seeded share of the prompts, the strategies of `pool` (rows with a question and a
    strategy) the memory would retrieve for their questions (top-k above the similarity gate),
    leaving out any written for the question itself; the other prompts get none. `vectors`:
    the embeddings of the pool's and the items' questions, where the caller has them."""
    if vectors is None:
        embedder = get_embedder()
        vectors = (embedder.encode([row["question"] for row in pool]),
                   embedder.encode([question for question, _, _ in items]))
    keys, questions = vectors
    rng = random.Random(config.seed + 2)
    notes = []
    for (question, _, _), vector in zip(items, questions):
        if rng.random() >= config.sft_notes_share:
            notes.append([])
            continue
        scores = keys @ vector
        ranked = [i for i in sorted(range(len(pool)), key=lambda i: -scores[i])
                  if scores[i] >= config.sft_notes_min_similarity
                  and pool[i]["question"].strip() != question.strip()]
        notes.append([Strategy(0, pool[i].get("namespace", ""), pool[i]["question"],
                               pool[i]["strategy"], None, "", 0.0, 0.0)
                      for i in ranked[:config.sft_notes_top_k]])
    return notes


def _refuse_evaluation_questions(questions: list[str], config: TrainConfig) -> None:
    asked = set(questions)
    for spec in config.eval_tasks:
        task = get_task(spec)
        split = "test" if "test" in task.splits else task.default_split
        shared = [e for e in task.examples(split) if e.question in asked]
        if shared:
            raise ValueError(f"{len(shared)} worked solution(s) answer {task.name}/{split} "
                             f"questions (first: {shared[0].question[:60]!r})")


def run_sft(config: TrainConfig) -> dict:
    """Train (or resume) the competence stage; returns its record (OUTPUT_DIR/run.json)."""
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    from training.adapters import model_to_train, write_serving
    from training.grpo import LOG_FILE, _on_cuda, embedded_name, point_adapter_at_base

    config.check_inputs()
    rows = sft_rows(config)  # data problems surface before any model loads
    output_dir, checkpoint, run = begin_stage(config, stage="sft", examples=len(rows))
    cuda = _on_cuda(config)

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                with open(output_dir / LOG_FILE, "a") as handle:
                    handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = SFTConfig(output_dir=str(output_dir), num_train_epochs=config.sft_epochs,
                     learning_rate=config.sft_learning_rate, lr_scheduler_type="cosine",
                     warmup_steps=0.05, per_device_train_batch_size=config.sft_batch_size,
                     logging_steps=config.logging_steps, save_strategy="steps",
                     save_steps=config.save_steps, save_total_limit=2, report_to="none",
                     use_cpu=not cuda, bf16=config.bf16 and cuda, seed=config.seed,
                     completion_only_loss=True, gradient_checkpointing=False,
                     max_length=768,
                     # batches of similar lengths: less padding computed on CPU
                     train_sampling_strategy="group_by_length",
                     model_init_kwargs={"trust_remote_code": config.trust_remote_code})
    start_adapter = Path(config.start_adapter) if config.start_adapter else None
    if config.sft_lora:
        model, peft_config = model_to_train(config, checkpoint, start_adapter)
    else:
        model, peft_config = checkpoint, None
    from datasets import Dataset

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[JsonlLog()])
    last = get_last_checkpoint(str(output_dir)) if config.resume else None
    with timed(run, "train_seconds", output_dir):
        trainer.train(resume_from_checkpoint=last)
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    write_serving(adapter_dir, config)
    if config.sft_lora:
        point_adapter_at_base(adapter_dir, embedded_name(config.model)
                              if embedded.resolve_embedded(config.model) else config.model)
    run.update({"steps": trainer.state.global_step, "adapter": str(adapter_dir),
                "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history)
                                    if "loss" in e), None)})
    save_run(output_dir, run)
    return run
