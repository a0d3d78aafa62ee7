"""Push a calibrated adapter (or the merged model) to the Hugging Face Hub with a model card that
states what was measured: base model, data, reward, steps, and held-out metrics before and after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from corea import embedded

from training.grpo import RUN_FILE, point_adapter_at_base, trainable_checkpoint

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def load_run(adapter_dir: Path) -> dict:
    path = adapter_dir.parent / RUN_FILE
    if not path.is_file():
        raise ValueError(f"no {RUN_FILE} beside {adapter_dir}: push an adapter written by "
                         "`python -m training grpo`, whose run record holds the measured metrics")
    return json.loads(path.read_text())


def hub_base(run: dict) -> str:
    found = embedded.resolve_embedded(run["base_model"])
    return found.hub_id if found else run["base_model"]


def _metrics_table(run: dict) -> str:
    before, after = run.get("before"), run.get("after")
    if not before or not after:
        return "_No held-out evaluation was recorded for this run (eval_limit was 0)._\n"
    lines = ["| task | n | accuracy before → after | format rate | ECE | AUROC | Brier |",
             "|---|---|---|---|---|---|---|"]

    def pair(key, name):
        a, b = before[name][key], after[name][key]
        show = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        return f"{show(a)} → {show(b)}"

    for name in after:
        lines.append(f"| {name} | {after[name]['n']} | {pair('accuracy', name)} | "
                     f"{pair('format_rate', name)} | {pair('ece', name)} | {pair('auroc', name)} | "
                     f"{pair('brier', name)} |")
    levels = after.get("all", {}).get("accuracy_by_level")
    if levels:
        lines += ["", "Accuracy by difficulty level (generated arithmetic, steps = level):", "",
                  "| level | before | after |", "|---|---|---|"]
        for level, value in levels.items():
            lines.append(f"| {level} | {before['all']['accuracy_by_level'].get(level, 0):.3f} | "
                         f"{value:.3f} |")
    return "\n".join(lines) + "\n"


def _stages(config: dict) -> str:
    """The supervised stages before GRPO, as card bullets (none when the run had none)."""
    lines = []
    if config.get("warmup_steps"):
        lines.append(f"- **Format warm-up**: {config['warmup_steps']} supervised steps on worked "
                     "solutions of generated training problems, all stating confidence "
                     f"{config['warmup_confidence']}\n")
    if config.get("self_label_size"):
        tasks = ", ".join(config.get("self_label_tasks") or config["tasks"])
        lines.append(f"- **Self-labelled confidence**: {config['self_label_size']} training "
                     f"problems of each of {tasks}, answered {config['self_label_samples']} times "
                     "by the model; it learned to state (right + 0.5) / (samples + 1) after its own "
                     f"answers ({config['self_label_epochs']} epochs, loss on the confidence only)\n")
    return "".join(lines)


def model_card(run: dict, merged: bool) -> str:
    config = run["config"]
    base = hub_base(run)
    reward = {"brier": "Brier, 1 − (correct − c)² (RLCR)",
              "corea_l1": "COREA group L1, −|c − p_group|"}[config["confidence_reward"]]
    command = "python -m training grpo " + " ".join(
        f"--{k} {','.join(v) if isinstance(v, list) else v}" for k, v in config.items())
    return f"""---
base_model: {base}
library_name: {"transformers" if merged else "peft"}
license: apache-2.0
tags: [corea, confidence-calibration, grpo, trl, {"merged" if merged else "lora"}]
pipeline_tag: text-generation
---

# {Path(run.get("adapter", "adapter")).parent.name}: a confidence-calibrated {base}

Trained with [corea](https://github.com/) `python -m training grpo` so that the confidence it states
after its answer (`Answer: …` / `Confidence: <0 to 1>`) matches how often it is right; in a corea
cascade, answers below the threshold are deferred to a larger model.

- **Base model**: {base} ({run["base_model"]}; trained on its weights as dequantized from the
  GGUF that corea embeds, when the base is an embedded model)
- **Data**: {", ".join(config["tasks"])} (train splits), {run.get("train_questions", "?")} questions,
  {"easy first" if config["curriculum"] else "shuffled"}
- **Reward**: {config["format_weight"]} × format + {config["correct_weight"]} × correctness +
  {config["confidence_weight"]} × {reward}; the last two are 0 when the format fails
{_stages(config)}- **GRPO**: {run.get("steps", "?")} steps, {config["num_generations"]} completions per prompt,
  temperature {config["temperature"]}, β = {config["beta"]}, LoRA r = {config["lora_r"]},
  learning rate {config["learning_rate"]}
- **Machine**: {run.get("machine", "?")}, {run.get("train_seconds", "?")} s of training

## Held-out results (measured before and after training)

Test splits of {", ".join(config["eval_tasks"])}, {config["eval_limit"]} questions each, greedy
decoding, corea's prompt with its two worked examples.

{_metrics_table(run)}
## Reproduce

```bash
{command}
```
"""


def prepare_folder(adapter_dir: Path, out_dir: Path, merge: bool) -> Path:
    """The exact folder that would be uploaded: adapter (or merged model), tokenizer, card."""
    adapter_dir = Path(adapter_dir)
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise ValueError(f"{adapter_dir} is not an adapter folder (missing {', '.join(missing)})")
    run = load_run(adapter_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty; choose an empty or new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = trainable_checkpoint(run["base_model"])
    if merge:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out_dir)
    else:
        for name in ADAPTER_FILES:
            shutil.copy2(adapter_dir / name, out_dir / name)
        point_adapter_at_base(out_dir, hub_base(run))
    (out_dir / "README.md").write_text(model_card(run, merge))
    (out_dir / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    return out_dir


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                      commit_message="Upload corea-calibrated model")
    return f"https://huggingface.co/{repo_id}"
