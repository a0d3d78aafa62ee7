"""The Memory tab: browse, search, delete and export the strategies a store holds; and what the
Ask tab shows of the strategies its small model was given.

A visitor names a store by a short name, which is a SQLite file in corea's memory folder
(`COREA_MEMORY_DIR`, else the cache's `memory/`): a page on a public server must not open or
create files anywhere else. A shared PostgreSQL store is configured by whoever runs the app,
in `COREA_MEMORY_STORE` (its URL holds a password, which is never typed into or shown on a page),
and is what an empty name opens.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
import threading
from pathlib import Path

import gradio as gr

from corea.embedded import cache_dir
from corea.memory import (MemoryConfig, StoreError, StoreUnavailable, StrategyMemory,
                          export_jsonl)

TABLE_HEADERS = ["id", "namespace", "question", "strategy", "LLM confidence", "uses", "merged",
                 "similarity"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MEMORIES: dict[tuple[str, str], StrategyMemory] = {}
_MEMORIES_LOCK = threading.Lock()


def memory_dir() -> Path:
    path = Path(os.environ.get("COREA_MEMORY_DIR") or cache_dir() / "memory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_location(name: str) -> str:
    """Where a store name points: the configured store for an empty name, else a file in the
    memory folder. Anything that is not a plain short name is refused."""
    name = (name or "").strip()
    if not name:
        return os.environ.get("COREA_MEMORY_STORE") or str(memory_dir() / "default.db")
    if not _NAME.match(name) or ".." in name:
        raise gr.Error("a store name is up to 64 letters, digits, '-', '_' or '.', such as "
                       "'gsm8k-team'")
    return str(memory_dir() / (name if name.endswith(".db") else f"{name}.db"))


def memory_for(name: str, namespace: str, by_program: bool = False) -> StrategyMemory:
    """One StrategyMemory per store, namespace and mode per process (the encoder loads once).
    When both models answer by program (`by_program`), the LLM's programs are stored and the SLM
    reads them on doubt, the setup that saved most (benchmarks/memory/README.md)."""
    namespace = (namespace or "").strip() or "default"
    key = (store_location(name), namespace, by_program)
    mode = {"write": "program", "consult": "on_doubt"} if by_program else {}
    with _MEMORIES_LOCK:
        if key not in _MEMORIES:
            try:
                _MEMORIES[key] = StrategyMemory(MemoryConfig(store=key[0], namespace=namespace,
                                                             **mode))
            except StoreError as error:
                raise gr.Error(_public(str(error))) from None
        return _MEMORIES[key]


def _public(message: str) -> str:
    """A message without a store URL's password."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", message)


def recall_markdown(recall) -> str:
    """The strategies the SLM was given, as the Ask tab shows them: quoted, never rendered as
    markup, since a strategy is data written by a model."""
    if recall is None:
        return ""
    if recall.note:
        return f"*Memory:* {html.escape(_public(recall.note))}\n\n"
    if not recall.strategies:
        return "*Memory:* no stored strategy was similar enough; the SLM got none.\n\n"
    lines = [f"*Memory gave the SLM {len(recall.strategies)} strategies, as quoted data:*"]
    for strategy, similarity in zip(recall.strategies, recall.similarities):
        lines.append(f"- #{strategy.id} (similarity {similarity:.2f}): "
                     f"<code>{html.escape(strategy.strategy)}</code>")
    return "\n".join(lines) + "\n\n"


def lesson_markdown(result) -> str:
    lesson = getattr(result, "lesson", None)
    parts = []
    if lesson is not None:
        stored = f" as #{lesson.stored_id}" if lesson.stored_id is not None else ""
        parts.append(f"*Memory:* strategy {html.escape(lesson.reason)}{stored}"
                     + (f": <code>{html.escape(lesson.strategy)}</code>" if lesson.strategy
                        else ""))
    if getattr(result, "memory_note", None) and (lesson is None or lesson.note):
        parts.append(f"*Memory:* {html.escape(_public(result.memory_note))}")
    return ("\n\n" + "\n\n".join(parts)) if parts else ""


def _rows(strategies, similarities=None) -> list[list]:
    similarities = similarities or [None] * len(strategies)
    return [[s.id, s.namespace, s.question, s.strategy,
             None if s.confidence is None else round(s.confidence, 3), s.uses, s.merged,
             None if sim is None else round(sim, 3)] for s, sim in zip(strategies, similarities)]


def _guarded(function):
    """Store faults become a message on the page."""
    def run(*args):
        try:
            return function(*args)
        except (StoreError, StoreUnavailable) as error:
            raise gr.Error(_public(str(error))) from None
    run.__name__ = function.__name__
    return run


@_guarded
def browse(name, namespace, text=""):
    memory = memory_for(name, namespace)
    strategies = memory.store.list(memory.config.namespace, text=(text or "").strip(), limit=200)
    counts = memory.store.namespaces()
    summary = ", ".join(f"{ns}: {count}" for ns, count in counts.items()) or "empty"
    return _rows(strategies), f"Strategies per namespace — {html.escape(summary)}"


@_guarded
def search(name, namespace, question):
    if not (question or "").strip():
        raise gr.Error("type a question to find the strategies it would be given")
    memory = memory_for(name, namespace)
    hits = memory.store.search(memory.config.namespace,
                               memory.embedder.encode([question.strip()])[0], top_k=10,
                               count_use=False)
    gate = memory.config.min_similarity
    given = sum(h.similarity >= gate for h in hits[:memory.config.top_k])
    return (_rows([h.strategy for h in hits], [h.similarity for h in hits]),
            f"The SLM would get the top {memory.config.top_k} at similarity >= {gate:.2f}: "
            f"{given} of these.")


@_guarded
def delete(name, namespace, ids_text):
    ids = [int(part) for part in re.findall(r"\d+", ids_text or "")]
    if not ids:
        raise gr.Error("give the ids to delete, such as '3, 7'")
    memory = memory_for(name, namespace)
    removed = memory.store.delete(ids)
    rows, summary = browse(name, namespace)
    return rows, f"Deleted {removed} of {len(ids)}. {summary}"


@_guarded
def export(name, namespace):
    memory = memory_for(name, namespace)
    folder = Path(tempfile.mkdtemp(prefix="corea-memory-"))
    path = folder / f"strategies-{memory.config.namespace}.jsonl"
    count = export_jsonl(memory.store, path, memory.config.namespace)
    return str(path), f"Exported {count} strategies."


def build_memory_tab() -> None:
    """The tab's components and events (inside a gr.Blocks context)."""
    gr.Markdown("Strategies the large model wrote for deferred questions, which later similar "
                "questions give the small model as quoted data. Ask with a store named on the "
                "Ask tab to fill one.")
    with gr.Row():
        name = gr.Textbox(label="Store", placeholder="empty: the app's configured store",
                          info="a short name (a file in corea's memory folder)")
        namespace = gr.Textbox(label="Namespace", value="default")
        text = gr.Textbox(label="Filter (words in the question or strategy)")
        show = gr.Button("Show", variant="primary")
    summary = gr.Markdown(elem_id="memory-summary")
    table = gr.Dataframe(headers=TABLE_HEADERS, label="Strategies", interactive=False,
                         wrap=True)
    with gr.Row():
        question = gr.Textbox(label="Search by question", scale=3,
                              placeholder="the strategies this question would retrieve")
        find = gr.Button("Search")
    with gr.Row():
        ids = gr.Textbox(label="Delete ids", placeholder="3, 7", scale=3)
        remove = gr.Button("Delete", variant="stop")
        download = gr.Button("Export JSONL")
    exported = gr.File(label="Export", interactive=False)
    show.click(browse, [name, namespace, text], [table, summary], api_name="memory_browse")
    find.click(search, [name, namespace, question], [table, summary], api_name="memory_search",
               concurrency_limit=1, concurrency_id="models")
    remove.click(delete, [name, namespace, ids], [table, summary], api_name="memory_delete")
    download.click(export, [name, namespace], [exported, summary], api_name="memory_export")
