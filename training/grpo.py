"""GRPO calibration of an SLM: TRL's GRPOTrainer with a PEFT LoRA adapter, on CPU or CUDA.

The rewards (training.rewards) read completions with corea's parser, so the model learns the very
format the cascade serves. A run evaluates the model on held-out questions before and after
training, writes its logs as JSON Lines (read by the app's training tab), plots them, and keeps its
adapter in OUTPUT_DIR/adapter. Interrupted runs resume from their last checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

from corea import embedded
from corea.metrics import expected_calibration_error

from training.adapters import model_to_train, write_serving
from training.config import TrainConfig
from training.data import evaluation_sets, to_dataset, training_rows
from training.records import RUN_FILE, begin_stage, load_run, machine, save_run, timed  # noqa: F401
from training.rewards import CONFIDENCE_REWARDS, correctness_reward, format_reward, score

LOG_FILE = "train_log.jsonl"


def trainable_checkpoint(model: str) -> str:
    """A path or Hub id that transformers can load for training."""
    if embedded.resolve_embedded(model) is not None:
        return str(embedded.trainable_copy(model))
    if model.endswith(".gguf"):
        return str(embedded.gguf_checkpoint(Path(model)))
    return model


def check_trainable(checkpoint: str, trust_remote_code: bool = False) -> None:
    """A clear error, before any training, for a model transformers cannot train as a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        model_config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot train {checkpoint!r}: not an embedded name, a local checkpoint or "
                         f"a reachable Hub id ({str(error).splitlines()[0][:200]})") from None
    if model_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise ValueError(f"cannot train {checkpoint!r}: a {model_config.model_type} model is not a "
                         "causal language model")


def with_calibration_logging(reward_function):
    """The confidence reward, also logging the batch's accuracy, format rate, mean confidence and
    ECE through TRL's `log_metric` hook, so calibration can be watched while it is learned."""

    @functools.wraps(reward_function)
    def wrapped(completions, gold, checker, log_metric=None, **columns):
        if log_metric is not None:
            scored = score(completions, gold, checker)
            confidence = [s.confidence if s.format_ok else 0.0 for s in scored]
            correct = [s.format_ok and s.correct for s in scored]
            log_metric("calibration/ece", expected_calibration_error(confidence, correct))
            log_metric("calibration/accuracy", sum(correct) / len(correct))
            log_metric("calibration/format_rate", sum(s.format_ok for s in scored) / len(scored))
            log_metric("calibration/mean_confidence", sum(confidence) / len(confidence))
        return reward_function(completions, gold=gold, checker=checker, **columns)

    return wrapped


def _on_cuda(config: TrainConfig) -> bool:
    import torch

    return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())


def build_trainer(config: TrainConfig, rows: list[dict], checkpoint: str,
                  start_adapter: Path | None = None, callbacks: list | None = None):
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    output_dir = Path(config.output_dir)
    cuda = _on_cuda(config)

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                with open(output_dir / LOG_FILE, "a") as handle:
                    handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    args = GRPOConfig(
        output_dir=str(output_dir), max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_generations=config.num_generations, max_completion_length=config.max_completion_length,
        temperature=config.temperature, beta=config.beta, scale_rewards=config.scale_rewards,
        loss_type=config.loss_type, use_vllm=config.use_vllm,
        reward_weights=[config.format_weight, config.correct_weight, config.confidence_weight],
        logging_steps=config.logging_steps, save_steps=config.save_steps, save_strategy="steps",
        seed=config.seed, shuffle_dataset=not config.curriculum, report_to="none",
        use_cpu=not cuda, bf16=config.bf16 and cuda, remove_unused_columns=False,
        model_init_kwargs={"trust_remote_code": config.trust_remote_code},
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rewards = [format_reward, correctness_reward,
               with_calibration_logging(CONFIDENCE_REWARDS[config.confidence_reward])]
    # GRPO goes on training the earlier stages' adapter, if any.
    model, peft_config = model_to_train(config, checkpoint, start_adapter)
    return GRPOTrainer(model=model, reward_funcs=rewards, args=args,
                       train_dataset=to_dataset(rows), processing_class=tokenizer,
                       peft_config=peft_config, callbacks=[JsonlLog(), *(callbacks or [])])


def _evaluate(config: TrainConfig, checkpoint: str, adapter: Path | None, label: str) -> dict:
    from corea.models import TransformersModel

    from training.evaluate import evaluate_model

    model = TransformersModel(checkpoint, name=embedded_name(config.model), adapter=adapter,
                              trust_remote_code=config.trust_remote_code)
    if adapter is not None:
        model.name += f"+{Path(adapter).name}"
    return evaluate_model(model, evaluation_sets(config), config.eval_limit,
                          Path(config.output_dir) / "eval", label, config.eval_max_new_tokens)


def embedded_name(model: str) -> str:
    found = embedded.resolve_embedded(model)
    return found.name if found else Path(model).name


def point_adapter_at_base(adapter_dir: Path, base: str) -> None:
    """Record the base by the name users load it with (an embedded name or Hub id), not by the
    cache path it was trained from, so the adapter works on any machine."""
    path = adapter_dir / "adapter_config.json"
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = base
    path.write_text(json.dumps(data, indent=2) + "\n")


def train(config: TrainConfig, callbacks: list | None = None) -> dict:
    """Run (or resume) a calibration run; returns its record (also in OUTPUT_DIR/run.json).
    `callbacks`: extra transformers TrainerCallbacks for the GRPO trainer (the app's cancel)."""
    from transformers.trainer_utils import get_last_checkpoint

    if config.self_label_size and config.self_label_sample_only:
        raise ValueError("self_label_sample_only stops after sampling: run it as "
                         "`python -m training self-label`, not inside the GRPO pipeline")
    config.check_inputs()
    rows = training_rows(config)  # data problems surface before any model loads
    output_dir, checkpoint, run = begin_stage(config, train_questions=len(rows))
    if config.eval_limit and "before" not in run:
        run["before"] = _evaluate(config, checkpoint, None, "before")
        save_run(output_dir, run)

    adapter = Path(config.start_adapter) if config.start_adapter else None
    if config.warmup_steps:
        from training.warmup import run_warmup

        adapter = run_warmup(config, checkpoint, output_dir, use_cpu=not _on_cuda(config))
        if config.eval_limit and "after_warmup" not in run:
            run["after_warmup"] = _evaluate(config, checkpoint, adapter, "after-warmup")
            save_run(output_dir, run)
    if config.self_label_size:
        from training.self_label import run_self_label

        adapter = run_self_label(config, checkpoint, output_dir, adapter,
                                 use_cpu=not _on_cuda(config), run=run)
        if config.eval_limit and "after_self_label" not in run:
            run["after_self_label"] = _evaluate(config, checkpoint, adapter, "after-self-label")
            save_run(output_dir, run)
    trainer = build_trainer(config, rows, checkpoint, adapter, callbacks)
    last = get_last_checkpoint(str(output_dir)) if config.resume else None
    start = time.perf_counter()
    with timed(run, "grpo_seconds", output_dir):
        trainer.train(resume_from_checkpoint=last)
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    base = embedded_name(config.model) if embedded.resolve_embedded(config.model) else config.model
    point_adapter_at_base(adapter_dir, base)
    write_serving(adapter_dir, config)
    run.update({"steps": trainer.state.global_step, "resumed_from": last,
                "train_seconds": round(time.perf_counter() - start, 1),
                "adapter": str(adapter_dir)})
    save_run(output_dir, run)
    if config.eval_limit:
        run["after"] = _evaluate(config, checkpoint, adapter_dir, "after")
        save_run(output_dir, run)

    from corea.plots import read_log, training_figure

    log = read_log(output_dir / LOG_FILE)
    if log:
        training_figure(log).write_html(str(output_dir / "training_curves.html"))
    run["log_finite"] = all(math.isfinite(v) for entry in log for v in entry.values()
                            if isinstance(v, (int, float)))
    save_run(output_dir, run)
    return run


