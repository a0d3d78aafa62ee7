"""`python -m training`: RL confidence calibration of the small model.

    # a run of a few minutes on CPU, to see that everything works
    python -m training grpo --config training/configs/cpu-smoke.yaml
    # a real run on CPU (an hour or two); resumable: run the same command again after a stop
    python -m training grpo --config training/configs/cpu-small.yaml
    # the staged recipe of the default trained SLM: competence, self-labelled confidence, GRPO
    python -m training sft --config training/configs/cpu-mix-sft.yaml
    python -m training self-label --config training/configs/cpu-mix-self-label.yaml
    python -m training grpo --config training/configs/cpu-mix-grpo-brier.yaml
    # GPU recipes (bf16; vLLM and several GPUs through accelerate launch)
    accelerate launch -m training grpo --config training/configs/gpu-1.5b.yaml

    # judge a model on held-out questions, with or without an adapter
    python -m training eval --model smollm2 --adapter runs/cpu-small/adapter --task arith-1 --task arith-2
    # fit the step routers (Gaussian mixture, learned policy) on the SLM's training-split steps
    python -m training router --task arith-mix --limit 40 --out adapters/step-router
    # publish the adapter (or --merge) with a model card of the measured metrics
    python -m training push --adapter runs/cpu-small/adapter --repo you/smollm2-calibrated [--dry-run DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def cmd_grpo(args, extra: list[str]) -> int:
    from training.config import load_config, options_help

    if args.list_options:
        print(options_help())
        return 0
    config = load_config(args.config, extra)
    from training.grpo import train

    run = train(config)
    from training.evaluate import format_results

    for label in ("before", "after"):
        if label in run:
            print(format_results(run[label], f"\nheld-out, {label} training:"))
    print(f"\nadapter: {run['adapter']}\nrun record: {Path(config.output_dir) / 'run.json'}")
    return 0


def cmd_stage(args, extra: list[str]) -> int:
    """sft / self-label: one stage, from a config, resumable, its record in OUTPUT_DIR/run.json."""
    from training.config import load_config, options_help

    if args.list_options:
        print(options_help())
        return 0
    config = load_config(args.config, extra)
    if args.command == "sft":
        from training.sft import run_sft as run_stage
    else:
        from training.self_label import run_self_label_stage as run_stage
    run = run_stage(config)
    if "adapter" in run:  # a sample-only self-label run trains none and says so itself
        print(f"adapter: {run['adapter']}")
    print(f"run record: {Path(config.output_dir) / 'run.json'}")
    return 0


def cmd_eval(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    from corea.tasks import get_task

    from training.evaluate import evaluate, format_results

    sets = []
    for spec in args.task or ["arith-1", "arith-2", "arith-3"]:
        task = get_task(spec)
        split = args.split or ("test" if "test" in task.splits else task.default_split)
        if split not in task.splits:
            raise ValueError(f"task {task.name!r} has no split {split!r}")
        sets.append((task, split))
    label = "adapter" if args.adapter else "base"
    results = evaluate(args.model, args.adapter, sets, args.limit, Path(args.out), label,
                       args.max_new_tokens)
    print(format_results(results, f"{args.model}{' + ' + args.adapter if args.adapter else ''}:"))
    (Path(args.out) / f"{label}-summary.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def cmd_router(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    from training.router import collect_and_fit

    record = collect_and_fit(args.task or [], args.traces or [], args.out, args.limit,
                             args.model, args.trace_dir)
    print(json.dumps(record, indent=2))
    print(f"routers: {Path(args.out) / 'gmm.json'}, {Path(args.out) / 'learned.json'}")
    return 0


def cmd_push(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    from training.hub import prepare_folder, push

    if args.repo.count("/") != 1:
        raise ValueError("--repo must be owner/name")
    if args.dry_run is not None:
        target = Path(args.dry_run) if args.dry_run else Path(tempfile.mkdtemp(prefix="corea-push-"))
        print(prepare_folder(Path(args.adapter), target, args.merge))
        return 0
    from huggingface_hub import get_token

    if not get_token():  # before any work: a push without a token cannot succeed
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    with tempfile.TemporaryDirectory(prefix="corea-push-") as folder:
        staged = prepare_folder(Path(args.adapter), Path(folder) / "model", args.merge)
        print(push(staged, args.repo, args.private))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    grpo = commands.add_parser(
        "grpo", help="train the SLM's confidence with GRPO + LoRA",
        description="GRPO calibration run. Options come from --config (YAML) and then --key value "
                    "pairs; --list-options shows them all with their defaults.")
    grpo.add_argument("--config", help="a YAML config, e.g. training/configs/cpu-small.yaml")
    grpo.add_argument("--list-options", action="store_true", help="list every option and exit")
    grpo.set_defaults(handler=cmd_grpo)

    for name, summary in (("sft", "competence stage: fine-tune on worked solutions (no "
                                  "confidence taught)"),
                          ("self-label", "teach the confidence from the model's own sampled "
                                         "correctness (after sft)")):
        stage = commands.add_parser(
            name, help=summary, description=f"{summary}. Options come from --config (YAML) and "
                                             "then --key value pairs; run it again to resume.")
        stage.add_argument("--config", help="a YAML config, e.g. training/configs/cpu-mix-sft.yaml")
        stage.add_argument("--list-options", action="store_true", help="list every option and exit")
        stage.set_defaults(handler=cmd_stage)

    evaluate = commands.add_parser("eval", help="held-out accuracy and calibration of a model")
    evaluate.add_argument("--model", default="smollm2", help="base model (default: %(default)s)")
    evaluate.add_argument("--adapter", help="a PEFT adapter directory")
    evaluate.add_argument("--task", action="append", help="a task; repeat for several "
                                                          "(default: arith-1, arith-2, arith-3)")
    evaluate.add_argument("--split", help="split (default: test, else the task's default)")
    evaluate.add_argument("--limit", type=int, default=100, help="questions per task (default: 100)")
    evaluate.add_argument("--max-new-tokens", type=int, default=160)
    evaluate.add_argument("--out", default="runs/eval", help="where the trace tables go")
    evaluate.set_defaults(handler=cmd_eval)

    router = commands.add_parser(
        "router", help="fit the step routers (mixture and learned policy) on SLM step traces",
        description="Fit corea's step routers on training-split step traces; with --task the "
                    "SLM first writes those traces (resumable).")
    router.add_argument("--task", action="append", help="trace the SLM step by step on this "
                                                        "task's training split; repeat for several")
    router.add_argument("--traces", action="append", help="a step trace already written (JSONL)")
    router.add_argument("--limit", type=int, default=40, help="questions per task "
                                                             "(default: %(default)s)")
    router.add_argument("--model", default="smollm2", help="the SLM (default: %(default)s)")
    router.add_argument("--trace-dir", help="where --task traces go (default: OUT/traces)")
    router.add_argument("--out", default="runs/step-router", help="where the routers go")
    router.set_defaults(handler=cmd_router)

    push_parser = commands.add_parser("push", help="upload an adapter with its model card")
    push_parser.add_argument("--adapter", required=True, help="the run's adapter directory")
    push_parser.add_argument("--repo", required=True, help="the Hub repo, owner/name")
    push_parser.add_argument("--merge", action="store_true", help="upload the merged model instead")
    push_parser.add_argument("--private", action="store_true")
    push_parser.add_argument("--dry-run", nargs="?", const="", metavar="DIR",
                             help="write the folder and card locally (in DIR) and stop")
    push_parser.set_defaults(handler=cmd_push)
    return parser


def _interrupt_on_terminate() -> None:
    """SIGTERM (what `kill`, job schedulers and container stops send) ends a run the way Ctrl-C
    does: the stage records its wall time so far and its kept work, and the same command resumes."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _interrupt_on_terminate()
    try:
        return args.handler(args, extra)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
