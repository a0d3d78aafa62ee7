"""`python -m corea memory ...` (browse, search, export, import, delete a strategy store) and
`python -m corea bench-memory ...` (the online stream and the other memory benchmarks).

    python -m corea memory list --store memory.db --namespace gsm8k
    python -m corea memory search --store memory.db "Tom has 3 boxes of 4 apples..."
    python -m corea memory export --store memory.db --out strategies.jsonl
    python -m corea memory import --store postgresql://corea@db:5432/corea strategies.jsonl
    python -m corea memory delete --store memory.db --id 12 --id 13
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path


def with_memory(config, store: str, namespace: str | None = None, write: str | None = None,
                consult: str | None = None):
    """`config` with its memory section pointing at `store` (other memory settings kept, except
    the namespace, write mode and consult mode given)."""
    from dataclasses import replace

    from corea.memory import MemoryConfig

    memory = replace(config.memory, store=store) if config.memory else MemoryConfig(store=store)
    if namespace:
        memory = replace(memory, namespace=namespace)
    if write:
        memory = replace(memory, write=write)
    if consult:
        memory = replace(memory, consult=consult)
    return replace(config, memory=memory)


def print_recall(recall) -> None:
    """What memory gave the SLM, before it answers (the `ask` command's output)."""
    if recall.note:
        print(f"memory: {recall.note}", flush=True)
        return
    if not recall.strategies:
        print("memory: no stored strategy is similar enough; the SLM gets none", flush=True)
        return
    print(f"memory: {len(recall.strategies)} strategies given to the SLM as quoted data:")
    for strategy, similarity in zip(recall.strategies, recall.similarities):
        print(f"  #{strategy.id} (similarity {similarity:.2f}): {strategy.strategy}", flush=True)


def print_lesson(result) -> None:
    lesson = result.lesson
    if result.memory_note and (lesson is None or lesson.note):
        print(f"memory: {result.memory_note}")
    if lesson is not None:
        where = f" #{lesson.stored_id}" if lesson.stored_id is not None else ""
        print(f"memory: strategy {lesson.reason}{where}"
              + (f": {lesson.strategy}" if lesson.strategy else "")
              + (f" (its call cost ${result.memory_cost:.8f})" if result.memory_cost else ""))


def _store(args):
    from corea.memory import get_embedder, open_store

    embedder = get_embedder(args.embedder)
    return open_store(args.store, embedder), embedder


def cmd_memory(args) -> int:
    from corea.memory import export_jsonl, import_jsonl

    store, embedder = _store(args)
    try:
        if args.action == "namespaces":
            for name, count in store.namespaces().items():
                print(f"{name}\t{count}")
        elif args.action in ("list", "search"):
            if args.action == "search":
                hits = store.search(args.namespace, embedder.encode([args.text])[0], args.limit,
                                    args.min_similarity, count_use=False)
                shown = [{**h.strategy.to_dict(), "similarity": round(h.similarity, 4)}
                         for h in hits]
            else:
                shown = [s.to_dict() for s in store.list(args.namespace, text=args.text or "",
                                                         limit=args.limit)]
            for row in shown:
                print(json.dumps(row, ensure_ascii=False))
        elif args.action == "export":
            count = export_jsonl(store, args.out, args.namespace)
            print(f"{args.out}: {count} strategies")
        elif args.action == "import":
            stored, merged = import_jsonl(store, embedder, args.file, namespace=args.namespace)
            print(f"{args.file}: {stored} stored, {merged} merged into near-duplicates")
        elif args.action == "learn":
            from corea.memory import MemoryConfig, StrategyMemory
            from corea.memory_bench import learn_from_task
            from corea.models import get_model

            memory = StrategyMemory(MemoryConfig(store=args.store, namespace=args.namespace,
                                                 admit_confidence=args.admit_confidence),
                                    embedder=embedder, store=store)
            result = learn_from_task(memory, args.task, get_model(args.llm), split=args.split,
                                     limit=args.limit)
            memory.flush()
            print(json.dumps(result))
        elif args.action == "delete":
            if args.all:
                removed = store.delete_namespace(args.namespace)
            elif args.id:
                removed = store.delete(args.id)
            else:
                raise ValueError("say what to delete: --id N (repeatable) or --all with "
                                 "--namespace")
            print(f"deleted {removed} strategies")
    finally:
        store.close()
    return 0


def cmd_bench_memory(args) -> int:
    from corea import memory_bench as bench

    command = "python -m corea " + shlex.join(args.argv)
    if args.action == "latency":
        result = bench.retrieval_latency(args.size, args.store, args.queries,
                                         embed_fill=args.embed_fill)
        print(json.dumps(result, indent=2))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps({**result, "command": command}, indent=2) + "\n")
        return 0
    if args.action == "write":
        summary = bench.compare_write(args.task, args.limit, args.eval_limit, args.out,
                                      llm_spec=args.llm, slm_spec=args.slm,
                                      admit_confidence=args.admit_confidence, seed=args.seed)
        print(json.dumps(summary, indent=2))
        return 0
    if args.action == "stream":
        plan = bench.StreamPlan(
            task=args.task, limit=args.limit, out=args.out, slm=args.slm, llm=args.llm,
            slm_trace=args.slm_trace, llm_traces=tuple(args.llm_trace or ()), seed=args.seed,
            threshold=args.threshold, signal=args.signal, write=args.write,
            admit_confidence=args.admit_confidence, min_similarity=args.min_similarity,
            top_k=args.top_k, store=args.store,
            max_questions=args.max_questions, export=args.export,
            quote_problem=args.quote_problem, consult=args.consult)
        bench.run_stream(plan, progress=not args.quiet)
    if args.slm_trace and args.llm_trace and args.out.is_file():
        numbers = args.report_dir / f"stream-{args.task}.json"
        if args.action == "report":  # a report of a stream cites the command that streamed it
            command = _stream_command(numbers, args.out) or command
        from corea.calibration import spec_map

        summary, section = bench.report(args.task, args.out, args.slm_trace, args.llm_trace,
                                        command, report_dir=args.report_dir,
                                        confidence_map=spec_map(args.slm))
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / f"stream-{args.task}.md").write_text(section)
        numbers.write_text(json.dumps({**summary, "command": command}, indent=2) + "\n")
        print(section)
    return 0


def _stream_command(numbers: Path, out: Path) -> str | None:
    """The `bench-memory stream` command recorded beside an earlier report of the stream `out`."""
    try:
        command = json.loads(numbers.read_text()).get("command", "")
    except (OSError, ValueError):
        return None
    return command if " bench-memory stream " in command and str(out) in command else None


def add_commands(commands) -> None:
    """The `memory` and `bench-memory` subcommands, added to corea's command parser."""
    from corea.memory import CONSULT_MODES, DEFAULT_EMBEDDER, WRITE_MODES
    from corea.signals import RUNTIME_SIGNALS

    memory = commands.add_parser(
        "memory", help="browse, search, export, import, delete or fill a strategy store",
        description="A strategy store is a SQLite file or a postgresql:// URL. learn: the LLM "
                    "answers a task's questions and stores the strategies it is confident of, "
                    "as the cascade does when it defers (to fill a store before serving).")
    memory.add_argument("action", choices=("namespaces", "list", "search", "export", "import",
                                           "delete", "learn"))
    memory.add_argument("text", nargs="?", default="",
                        help="search: the question to find strategies for; list: a substring")
    memory.add_argument("--store", required=True, help="SQLite file or postgresql:// URL")
    memory.add_argument("--namespace", default=None,
                        help="one namespace (default: all for list/export; 'default' otherwise)")
    memory.add_argument("--limit", type=int, default=20,
                        help="list, search: rows shown; learn: questions (default: %(default)s)")
    memory.add_argument("--min-similarity", type=float, default=0.0,
                        help="search: the lowest similarity shown (default: %(default)s)")
    memory.add_argument("--out", type=Path, help="export: the JSONL file to write")
    memory.add_argument("--file", type=Path, help="import: the JSONL file to read")
    memory.add_argument("--id", type=int, action="append", help="delete: a strategy id")
    memory.add_argument("--all", action="store_true", help="delete: the whole --namespace")
    memory.add_argument("--task", help="learn: the task whose questions the LLM answers")
    memory.add_argument("--split", help="learn: the task's split (default: its default split)")
    memory.add_argument("--llm", default="qwen", help="learn: the LLM (default: %(default)s)")
    memory.add_argument("--admit-confidence", type=float, default=0.9,
                        help="learn: the LLM's confidence a strategy needs to be stored "
                             "(default: %(default)s)")
    memory.add_argument("--embedder", default=DEFAULT_EMBEDDER, help=argparse.SUPPRESS)
    memory.set_defaults(handler=_checked_memory)

    bench = commands.add_parser(
        "bench-memory", help="benchmark strategy memory: online stream, writing, latency",
        description="stream: run the cascade with memory over a task in a seeded order from an "
                    "empty store and report against the SLM without memory; report: only the "
                    "report of a finished stream; write: same-call against second-call strategy "
                    "writing; latency: retrieval time at --size stored strategies.")
    bench.add_argument("action", choices=("stream", "report", "write", "latency"))
    bench.add_argument("--task", default="arith-mix")
    bench.add_argument("--limit", type=int, default=150, help="questions (default: %(default)s)")
    bench.add_argument("--out", type=Path, help="stream: the memory trace (.jsonl); write: the "
                                                "summary (.json)")
    bench.add_argument("--slm", default="smollm2")
    bench.add_argument("--llm", default="qwen")
    bench.add_argument("--slm-trace", type=Path,
                       help="the SLM's plain trace: read, and streamed questions it lacks are "
                            "answered and added to it")
    bench.add_argument("--llm-trace", type=Path, nargs="+",
                       help="the LLM's traces: read; answers they lack are added to the last")
    bench.add_argument("--seed", type=int, default=0, help="the stream's order (default: 0)")
    bench.add_argument("--threshold", type=float,
                       help="stream: the SLM's threshold (default: the SLM's serving default, "
                            "0.8 unless its adapter declares one)")
    bench.add_argument("--signal", choices=RUNTIME_SIGNALS,
                       help="stream: what the SLM defers on (default: its serving default)")
    bench.add_argument("--write", default="second_call",
                       choices=[mode for mode in WRITE_MODES if mode != "off"],
                       help="stream: how the LLM writes a strategy; program: an LLM answering "
                            "by program (--llm program:qwen) has its checked program stored, "
                            "quoted with its problem, at no extra cost")
    bench.add_argument("--consult", default="always", choices=CONSULT_MODES,
                       help="stream: when the SLM reads the notes: always, or on_doubt (only "
                            "when it would defer without them; asked again with them)")
    bench.add_argument("--admit-confidence", type=float, default=0.9)
    bench.add_argument("--min-similarity", type=float, default=0.5)
    bench.add_argument("--top-k", type=int, default=2)
    bench.add_argument("--store", type=Path, help="stream: the store (default: beside --out); "
                                                  "latency: a scratch SQLite file")
    bench.add_argument("--export", type=Path,
                       help="stream: when it is finished, export its strategies here (JSONL)")
    bench.add_argument("--quote-problem", action="store_true",
                       help="stream: each note also quotes the problem its strategy was written "
                            "for (streams from before this option did)")
    bench.add_argument("--max-questions", type=int,
                       help="stream: stop after this many new questions (resume later)")
    bench.add_argument("--eval-limit", type=int, default=40,
                       help="write: test questions the SLM answers with each store")
    bench.add_argument("--size", type=int, default=10_000, help="latency: stored strategies")
    bench.add_argument("--queries", type=int, default=200, help="latency: questions timed")
    bench.add_argument("--json-out", type=Path, help="latency: also write the result here")
    bench.add_argument("--embed-fill", action="store_true",
                       help="latency: embed the stored fixtures with MiniLM instead of random "
                            "unit vectors (same search cost, minutes more CPU)")
    bench.add_argument("--report-dir", type=Path, default=Path("benchmarks/memory"),
                       help="stream/report: where the report's section and numbers go "
                            "(default: %(default)s)")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(handler=_checked_bench)


def _checked_memory(args) -> int:
    from corea.memory import StoreUnavailable

    try:
        return _memory_command(args)
    except StoreUnavailable as error:  # a one-line error, as any other bad input
        raise ValueError(str(error)) from error


def _memory_command(args) -> int:
    if args.action == "export" and not args.out:
        raise ValueError("memory export needs --out FILE.jsonl")
    if args.action == "import" and not args.file:
        raise ValueError("memory import needs --file FILE.jsonl")
    if args.action == "search" and not args.text.strip():
        raise ValueError("memory search needs the question text")
    if args.action in ("search", "import") and args.namespace is None:
        args.namespace = "default" if args.action == "search" else None
    if args.action == "learn":
        if not args.task:
            raise ValueError("memory learn needs --task: the questions the LLM learns from")
        args.namespace = args.namespace or args.task
    if args.action == "delete" and args.all and not args.namespace:
        raise ValueError("memory delete --all needs --namespace")
    return cmd_memory(args)


def _checked_bench(args) -> int:
    if args.action in ("stream", "report", "write") and not args.out:
        raise ValueError(f"bench-memory {args.action} needs --out")
    if args.action == "latency" and not args.store:
        import tempfile

        args.store = Path(tempfile.gettempdir()) / "corea-memory-latency.db"
    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    return cmd_bench_memory(args)
