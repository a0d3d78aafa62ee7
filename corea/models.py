"""One `Model` interface and its backends.

A model is named by a string (`load_model`):

- an embedded default: `smollm2` / `qwen` (see corea.embedded; offline);
- a GGUF file: `path/to/model.gguf`;
- a local transformers checkpoint directory, or a PEFT adapter directory (its base model is read
  from adapter_config.json), or a base model plus `adapter=...`;
- a Hugging Face Hub id: `owner/name` (downloaded by transformers);
- an OpenAI-compatible endpoint: `http(s)://host/v1` with the served model's name after `#`
  (`http://127.0.0.1:8000/v1#qwen`), reached through `huggingface_hub.InferenceClient`. This is how
  vLLM, TGI and HF Inference Providers are used.

Every backend returns the text and the real token counts of each call.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from corea import embedded
from corea.calibration import PlattMap, adapter_map
from corea.stopping import cut_reply, find_stop, stop_of, stops_early

BACKENDS = ("auto", "llama.cpp", "transformers")
TOKEN_ENV_VARS = ("COREA_API_TOKEN", "HF_TOKEN")


class ModelError(RuntimeError):
    """A model could not be loaded or called; the message says what to do."""


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    done: bool = True
    # Per generated token: see TokenLogprobs; backends that were asked for log-probabilities
    # fill it (the confidence signals in corea.signals read it).
    token_logprobs: "TokenLogprobs | None" = None
    # Why the reply ended: "stop" (end of sequence, a stop sequence, or the protocol's last line),
    # "length" (max_new_tokens), "repetition" (cut because it repeated itself: a format failure);
    # None where the backend did not say.
    finish_reason: str | None = None


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 320
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    # The reply ends before the first of these (OpenAI's `stop`).
    stop: tuple[str, ...] = ()
    # The reply ends after its Confidence line, and one that repeats itself is cut (a format
    # failure); see corea.stopping. Off here, so a plain call runs to end of sequence as the trace
    # tables were made; cascades (ask, serve, the app) turn it on.
    stop_when_done: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")


class Model(ABC):
    """A chat model: conversations in, generations (text + token counts + time) out."""

    name: str
    # Whether corea's two worked examples go into this model's prompt. A model fine-tuned to
    # answer zero-shot says so in its adapter's corea.json, and is then served without them.
    few_shot: bool = True
    # A trained model's map of one confidence signal to the probability of being right
    # (corea.calibration), from its adapter's corea.json; the cascade reads that signal through it.
    confidence_map: "PlattMap | None" = None

    @abstractmethod
    def generate(self, conversations: list[list[dict]],
                 config: GenerationConfig = GenerationConfig()) -> list[Generation]:
        """One generation per conversation, in order; batched where the backend can."""

    def stream(self, messages: list[dict],
               config: GenerationConfig = GenerationConfig()) -> Iterator[Generation]:
        """Snapshots of a growing generation (`done=False`), ending with the full one."""
        yield self.generate([messages], config)[0]

    def continue_reply(self, messages: list[dict], prefix: str,
                       config: GenerationConfig = GenerationConfig(),
                       step_end: "Callable[[str], int | None] | None" = None) -> Generation:
        """Go on writing the assistant's reply to `messages` from `prefix` (reply text so far,
        possibly another model's). With `step_end`, generation stops as soon as it finds the end
        of a step in the new text (it returns where to cut) and the text is cut there;
        `completion_tokens` counts every token generated, the cut-off ones too (they were paid).
        Step-level routing (corea.steps) is built on this call."""
        raise ModelError(f"{self.name} cannot continue a partial reply on this backend")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# Per generated token: (text, log-probability, runner-up's log-probability, alternatives), where
# alternatives are the TOP_ALTERNATIVES likeliest tokens at that step as (text, log-probability),
# the chosen one included (the stated confidence's expectation, corea.signals, reads them).
TokenLogprobs = tuple[tuple[str, float, "float | None", "tuple[tuple[str, float], ...]"], ...]
TOP_ALTERNATIVES = 10


def cut_generation(text: str, token_logprobs, step_end) -> tuple[str, "TokenLogprobs | None"]:
    """`text` cut where `step_end` says a step ends (unchanged when it says nothing), and the
    token rows that start before the cut."""
    cut = step_end(text) if step_end else None
    if cut is None:
        return text, token_logprobs
    rows, position = [], 0
    for row in token_logprobs or ():
        if position >= cut:
            break
        rows.append(row)
        position += len(row[0])
    return text[:cut], tuple(rows) if token_logprobs is not None else None


def openai_token_logprobs(logprobs) -> TokenLogprobs | None:
    """Per-token rows from an OpenAI-shaped `logprobs` object (a dict, as llama.cpp returns it, or
    an object with the same fields, as huggingface_hub returns it)."""
    def field(item, name):
        return item.get(name) if isinstance(item, dict) else getattr(item, name, None)

    content = field(logprobs, "content") if logprobs is not None else None
    if not content:
        return None
    rows = []
    for token in content:
        top = tuple((field(t, "token"), float(field(t, "logprob")))
                    for t in field(token, "top_logprobs") or [])
        others = [logprob for text, logprob in top if text != field(token, "token")]
        rows.append((field(token, "token"), float(field(token, "logprob")),
                     others[0] if others else None, top))
    return tuple(rows)


# --------------------------------------------------------------------------- llama.cpp (GGUF, CPU)

class SampledLogprobs:
    """The log-probability of each token llama.cpp samples, the best other token's, and the
    TOP_ALTERNATIVES likeliest tokens', read from that step's logits as it is sampled.

    llama-cpp-python returns log-probabilities only from a model built with `logits_all=True`,
    which computes the vocabulary's logits at every prompt position and then sorts the whole
    vocabulary in Python for every generated token: 3-4x the plain generation time on the
    embedded SLM. The logits of the step being sampled are in the context anyway, so this wraps
    the instance's `sample` (which `Llama.generate` calls once per generated token with the chosen
    token in hand) and takes the log-softmax of that one row with numpy. Calls into one instance
    never overlap (LlamaCppModel's lock), so one list of rows serves them all."""

    def __init__(self, llm):
        import llama_cpp

        self._llm = llm
        self._sample = llm.sample
        self._n_vocab = llm.n_vocab()
        self._vocab = llm._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._logits_of = llama_cpp.llama_get_logits_ith
        self.sampled: list[tuple[int, float, float | None, list[tuple[int, float]]]] = []
        llm.sample = self._sample_and_record

    def clear(self) -> None:
        self.sampled = []

    def _sample_and_record(self, *args, **kwargs):
        import numpy as np

        token = self._sample(*args, **kwargs)
        idx = kwargs.get("idx")
        row = -1 if idx is None else idx - self._llm.n_tokens  # as Llama.sample reads it
        logits = np.ctypeslib.as_array(self._logits_of(self._llm.ctx, row),
                                       shape=(self._n_vocab,))
        top = float(logits.max())
        normalizer = top + float(np.log(np.exp(logits - top, dtype=np.float32).sum()))
        chosen = float(logits[token])
        likeliest = np.argpartition(logits, -TOP_ALTERNATIVES)[-TOP_ALTERNATIVES:]
        likeliest = likeliest[np.argsort(-logits[likeliest])]
        # The best other token: the top one, unless the chosen token is it (then the second).
        other = float(logits[likeliest[1]]) if chosen >= top else top
        self.sampled.append((token, chosen - normalizer, other - normalizer,
                             [(int(i), float(logits[i]) - normalizer) for i in likeliest]))
        return token

    def generated(self) -> list[tuple[int, float, float | None, list[tuple[int, float]]]]:
        """The sampled tokens that are part of the reply (an end-of-generation token is not)."""
        return [entry for entry in self.sampled if not self._is_eog(self._vocab, entry[0])]

    def rows(self, text: str) -> TokenLogprobs:
        """One TokenLogprobs row per generated token that starts
        within `text`: tokens generated past it (a stop sequence, text held back from a stream
        that was closed) are not part of the reply."""
        rows, position = [], 0
        for token, logprob, other, top in self.generated():
            if position >= len(text):
                break
            piece = self._piece(token)
            rows.append((piece, logprob, other,
                         tuple((self._piece(i), alternative) for i, alternative in top)))
            position += len(piece)
        return tuple(rows)

    def _piece(self, token: int) -> str:
        return self._llm.detokenize([token]).decode("utf-8", errors="ignore")


_OPEN_LLAMAS: "weakref.WeakSet[LlamaCppModel]" = weakref.WeakSet()


@atexit.register
def _close_llamas() -> None:
    """Free llama.cpp models while the interpreter still works: left to their finalizers at
    shutdown, they print a traceback (llama-cpp-python's module globals are gone by then)."""
    for model in list(_OPEN_LLAMAS):
        model._llm.close()


class LlamaCppModel(Model):
    """A GGUF model run by llama-cpp-python: the fast path on CPU."""

    def __init__(self, path: str | Path, name: str | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, logprobs: bool = False):
        try:
            from llama_cpp import Llama
        except ImportError as error:
            raise ModelError("llama-cpp-python is not installed; use backend='transformers' "
                             "or `pip install llama-cpp-python`") from error
        self.path = Path(path)
        self.name = name or self.path.stem
        threads = n_threads or int(os.environ.get("COREA_THREADS", 0)) or os.cpu_count() or 1
        self.logprobs = logprobs
        self._llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
        # Log-probabilities are read as each token is sampled, not through llama.cpp's
        # `logits_all` (see SampledLogprobs): only when asked for.
        self._sampled = SampledLogprobs(self._llm) if logprobs else None
        # llama.cpp keeps one KV cache: calls into one instance must not overlap.
        self._lock = threading.Lock()
        self._cached_prefix: list[int] | None = None
        self._formatters: dict[bool, object] = {}
        _OPEN_LLAMAS.add(self)

    def _completion(self, messages: list[dict], config: GenerationConfig, stream: bool):
        extra = {}
        if config.stop:
            extra["stop"] = list(config.stop)
        self._prepare(messages)
        return self._llm.create_chat_completion(
            messages=messages, max_tokens=config.max_new_tokens, temperature=config.temperature,
            top_p=config.top_p, seed=config.seed, stream=stream, **extra,
        )

    def _formatter(self, add_generation_prompt: bool = True):
        """The model's chat template, compiled once per instance (every call renders it)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if add_generation_prompt not in self._formatters:
            template = self._llm.metadata.get("tokenizer.chat_template")
            self._formatters[add_generation_prompt] = Jinja2ChatFormatter(
                template=template, eos_token=self._token_text(self._llm.token_eos()),
                bos_token=self._token_text(self._llm.token_bos()),
                add_generation_prompt=add_generation_prompt) if template else None
        return self._formatters[add_generation_prompt]

    def _tokens(self, prompt: str) -> list[int]:
        """A prompt's tokens as llama-cpp-python's completion makes them (BOS where the model
        wants one, special tokens parsed)."""
        return self._llm.tokenize(prompt.encode(), add_bos=True, special=True)

    def _prepare(self, messages: list[dict], prompt: str | None = None) -> None:
        """Set the KV cache up for a call (under the lock), so that a reply depends only on its
        request and never on the calls before it, while the part of the prompt every call shares
        is evaluated once.

        llama.cpp's kernels do not give bit-identical logits across batch shapes, and greedy
        decoding of a small quantized model flips wherever two tokens are nearly tied. Left to
        itself, llama-cpp-python evaluates only what a new prompt does not share with the previous
        call's cache, so the same request was evaluated in other batches, and answered
        differently, depending on what was asked before (a stream after a whole reply to the
        same question, say). Here every prompt is split at the same place on every call: its
        prefix (the chat up to the last message: system prompt and worked examples) is
        evaluated on its own from an empty cache, and the rest on top of it. The prefix's cache
        is kept between calls and reused when the next prompt starts with the same tokens; the
        cache past it is dropped. Same request, same batches, same reply; and a warm call
        evaluates only its question."""
        import llama_cpp

        if self._sampled is not None:
            self._sampled.clear()
        prefix = self._shared_prefix(messages, prompt)
        if prefix and prefix == self._cached_prefix:
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._llm.ctx),
                                          -1, len(prefix), -1)
            self._llm.n_tokens = len(prefix)
            return
        self._llm.reset()
        memory = llama_cpp.llama_get_memory(self._llm.ctx)
        if memory is not None:
            llama_cpp.llama_memory_clear(memory, True)
        self._cached_prefix = None
        if prefix:
            self._llm.eval(prefix)
            self._cached_prefix = prefix

    def _shared_prefix(self, messages: list[dict], prompt: str | None) -> list[int] | None:
        """The tokens of the chat before its last message, when the whole prompt starts with
        exactly those tokens (a template that rewrites earlier turns has no shared prefix)."""
        if len(messages) < 2 or (formatter := self._formatter()) is None:
            return None
        full = prompt if prompt is not None else formatter(messages=messages).prompt
        head = self._formatter(add_generation_prompt=False)(messages=messages[:-1]).prompt
        if not full.startswith(head):
            return None
        prefix, tokens = self._tokens(head), self._tokens(full)
        # Only a true prefix with something after it: the reply's first token needs the logits
        # of a prompt token evaluated in this call.
        return prefix if len(prefix) < len(tokens) and tokens[:len(prefix)] == prefix else None

    def _token_logprobs(self, text: str) -> TokenLogprobs | None:
        return self._sampled.rows(text) if self._sampled is not None else None

    def generate(self, conversations, config=GenerationConfig()):
        if stops_early(config):  # watched token by token: the streamed path, whole
            return [list(self.stream(messages, config))[-1] for messages in conversations]
        results = []
        for messages in conversations:
            with self._lock:
                start = time.perf_counter()
                response = self._completion(messages, config, stream=False)
                elapsed = time.perf_counter() - start
                choice = response["choices"][0]
                text = choice["message"]["content"] or ""
                token_logprobs = self._token_logprobs(text)
            usage = response["usage"]
            results.append(Generation(
                text=text, prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"], latency_s=elapsed,
                token_logprobs=token_logprobs, finish_reason=choice.get("finish_reason"),
            ))
        return results

    def stream(self, messages, config=GenerationConfig()):
        options = stop_of(config)
        with self._lock:
            start = time.perf_counter()
            text, pieces, stopped, finish = "", 0, None, None
            chunks = self._completion(messages, config, stream=True)
            for chunk in chunks:
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                delta = choice["delta"].get("content") or ""
                if delta:
                    text += delta
                    pieces += 1
                    stopped = find_stop(text, **options)
                    if stopped is not None:
                        chunks.close()  # the reply is over: generate no further token
                        break
                    yield Generation(text, 0, pieces, time.perf_counter() - start, done=False)
            elapsed = time.perf_counter() - start
            # The stream carries no usage; count the tokens the way the server would have.
            prompt_tokens = self._count_prompt_tokens(messages)
            completion_tokens = len(self._llm.tokenize(text.encode(), add_bos=False, special=True))
            token_logprobs = self._token_logprobs(text)
        if stopped is not None:
            text, token_logprobs = cut_generation(text, token_logprobs, lambda _: stopped.cut)
            finish = stopped.reason
        yield Generation(text, prompt_tokens, completion_tokens, elapsed,
                         token_logprobs=token_logprobs, finish_reason=finish)

    def _count_prompt_tokens(self, messages: list[dict]) -> int:
        formatter = self._formatter()
        if formatter is None:
            return 0
        prompt = formatter(messages=messages).prompt
        return len(self._llm.tokenize(prompt.encode(), add_bos=False, special=True))

    def _token_text(self, token_id: int) -> str:
        return self._llm.detokenize([token_id], special=True).decode(errors="ignore") \
            if token_id >= 0 else ""

    def continue_reply(self, messages, prefix, config=GenerationConfig(), step_end=None):
        formatter = self._formatter()
        if formatter is None:
            raise ModelError(f"{self.name} has no chat template: it cannot continue a reply")
        prompt = formatter(messages=messages).prompt + prefix
        with self._lock:
            start = time.perf_counter()
            text = ""
            self._prepare(messages, prompt)
            # Streamed so that generation stops at the step's end instead of the reply's.
            chunks = self._llm.create_completion(
                prompt, max_tokens=config.max_new_tokens, temperature=config.temperature,
                top_p=config.top_p, seed=config.seed, stream=True)
            for chunk in chunks:
                text += chunk["choices"][0]["text"]
                if step_end and step_end(text) is not None:
                    chunks.close()
                    break
            elapsed = time.perf_counter() - start
            prompt_tokens = len(self._llm.tokenize(prompt.encode(), add_bos=False, special=True))
            token_logprobs = self._token_logprobs(text)
            completion_tokens = len(token_logprobs) if token_logprobs is not None else len(
                self._llm.tokenize(text.encode(), add_bos=False, special=True))
        text, token_logprobs = cut_generation(text, token_logprobs, step_end)
        return Generation(text, prompt_tokens, completion_tokens, elapsed,
                          token_logprobs=token_logprobs)


# ------------------------------------------------------------------------------------ transformers

class TransformersModel(Model):
    """A transformers causal LM (Hub id, local dir, GGUF file, optionally with a PEFT adapter)."""

    def __init__(self, source: str | Path, name: str | None = None, *, gguf_file: str | None = None,
                 adapter: str | Path | None = None, device: str | None = None,
                 trust_remote_code: bool = False, model=None, tokenizer=None,
                 logprobs: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name or Path(str(source)).name
        self.logprobs = logprobs
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        load_kwargs = {"trust_remote_code": trust_remote_code}
        if gguf_file:
            load_kwargs["gguf_file"] = gguf_file
        try:
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(source), **load_kwargs)
            if model is None:
                dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
                model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **load_kwargs)
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load model {source}: {error}".splitlines()[0]) from error
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # decoder-only batching pads on the left
        self._lock = threading.Lock()

    def _encode(self, conversations: list[list[dict]]):
        prompts = [
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            for messages in conversations
        ]
        return self.tokenizer(prompts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(self.device)

    def _generate_kwargs(self, config: GenerationConfig, prompt_length: int | None = None) -> dict:
        kwargs = {"max_new_tokens": config.max_new_tokens,
                  "pad_token_id": self.tokenizer.pad_token_id,
                  "return_dict_in_generate": True, "output_scores": self.logprobs}
        if prompt_length is not None and stops_early(config):
            kwargs["stopping_criteria"] = self._stopping(config, prompt_length)
        if config.temperature > 0:
            kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _stopping(self, config: GenerationConfig, prompt_length: int):
        """Ends each row of a batch where corea.stopping says its reply is over."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer, options = self.tokenizer, stop_of(config)

        class ReplyOver(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                over = [find_stop(tokenizer.decode(row[prompt_length:], skip_special_tokens=True),
                                  **options) is not None for row in input_ids]
                return torch.tensor(over, dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([ReplyOver()])

    def _finish(self, completion: list[int], scores, row: int, config: GenerationConfig,
                prompt_tokens: int, elapsed: float) -> Generation:
        """One row's Generation from its generated ids: cut where its reply was over."""
        stop_ids = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        length = next((i for i, t in enumerate(completion) if t in stop_ids), len(completion))
        text = self.tokenizer.decode(completion[:length], skip_special_tokens=True)
        token_logprobs = self._token_logprobs(scores, row, completion[:length])
        stopped = find_stop(text, **stop_of(config))
        if stopped is not None:
            text, token_logprobs = cut_generation(text, token_logprobs, lambda _: stopped.cut)
            finish, billed = stopped.reason, length
        else:
            finish = "length" if length >= config.max_new_tokens else "stop"
            # An eos token counts as generated: it was produced and paid for.
            billed = min(length + 1, len(completion))
        return Generation(text, prompt_tokens, billed, elapsed, token_logprobs=token_logprobs,
                          finish_reason=finish)

    def generate(self, conversations, config=GenerationConfig()):
        import torch

        if not conversations:
            return []
        with self._lock, torch.inference_mode():
            if config.temperature > 0:
                torch.manual_seed(config.seed)
            batch = self._encode(conversations)
            prompt_length = batch["input_ids"].shape[1]
            start = time.perf_counter()
            output = self.model.generate(**batch, **self._generate_kwargs(config, prompt_length))
            elapsed = time.perf_counter() - start
        # A batch finishes together: each row waited `elapsed`.
        return [self._finish(row[prompt_length:].tolist(), output.scores, index, config,
                             int(mask.sum()), elapsed)
                for index, (row, mask) in enumerate(zip(output.sequences,
                                                        batch["attention_mask"]))]

    def _token_logprobs(self, scores, row: int, ids: list[int]) -> TokenLogprobs | None:
        """A TokenLogprobs row per generated token, from generate()'s scores.
        Each token's text is what it adds to the decoded reply, so the texts join to the reply
        and the answer's characters can be matched to its tokens."""
        import torch

        if not self.logprobs or scores is None:
            return None
        rows, previous = [], ""
        for step, token_id in enumerate(ids):
            logprobs = torch.log_softmax(scores[step][row].float(), dim=-1)
            top = logprobs.topk(TOP_ALTERNATIVES)
            values, indices = top.values.tolist(), top.indices.tolist()
            chosen = float(logprobs[token_id])
            runner_up = values[1] if indices[0] == token_id else values[0]
            text = self.tokenizer.decode(ids[:step + 1], skip_special_tokens=True)
            alternatives = tuple((self.tokenizer.decode([index]), value)
                                 for index, value in zip(indices, values))
            rows.append((text[len(previous):], chosen, runner_up, alternatives))
            previous = text
        return tuple(rows)

    def stream(self, messages, config=GenerationConfig()):
        import torch
        from transformers import TextIteratorStreamer

        with self._lock:
            batch = self._encode([messages])
            prompt_length = batch["input_ids"].shape[1]
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                            skip_special_tokens=True)
            start = time.perf_counter()
            output = {}

            def run():
                with torch.inference_mode():
                    if config.temperature > 0:  # seeded as generate() is: the same sample
                        torch.manual_seed(config.seed)
                    output["ids"] = self.model.generate(
                        **batch, streamer=streamer, **self._generate_kwargs(config, prompt_length))

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            text = ""
            for piece in streamer:
                text += piece
                yield Generation(text, 0, 0, time.perf_counter() - start, done=False)
            worker.join()
        yield self._finish(output["ids"].sequences[0][prompt_length:].tolist(),
                           output["ids"].scores, 0, config, int(batch["attention_mask"].sum()),
                           time.perf_counter() - start)


    def continue_reply(self, messages, prefix, config=GenerationConfig(), step_end=None):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=True) + prefix
        batch = self.tokenizer([prompt], return_tensors="pt",
                               add_special_tokens=False).to(self.device)
        length, tokenizer = batch["input_ids"].shape[1], self.tokenizer

        class AtStepEnd(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                text = tokenizer.decode(input_ids[0, length:], skip_special_tokens=True)
                found = step_end is not None and step_end(text) is not None
                return torch.full((input_ids.shape[0],), found, dtype=torch.bool,
                                  device=input_ids.device)

        with self._lock, torch.inference_mode():
            if config.temperature > 0:
                torch.manual_seed(config.seed)
            start = time.perf_counter()
            output = self.model.generate(**batch, stopping_criteria=StoppingCriteriaList(
                [AtStepEnd()]), **self._generate_kwargs(config))
            elapsed = time.perf_counter() - start
        completion = output.sequences[0][length:].tolist()
        stop_ids = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        end = next((i for i, t in enumerate(completion) if t in stop_ids), len(completion))
        text = self.tokenizer.decode(completion[:end], skip_special_tokens=True)
        text, token_logprobs = cut_generation(
            text, self._token_logprobs(output.scores, 0, completion[:end]), step_end)
        return Generation(text, length, min(end + 1, len(completion)), elapsed,
                          token_logprobs=token_logprobs)


# ------------------------------------------------------------------------ OpenAI-compatible endpoint

class EndpointModel(Model):
    """An OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp server, HF Inference Providers)."""

    def __init__(self, base_url: str, model: str | None = None, token: str | None = None,
                 name: str | None = None, timeout_s: float = 120.0, concurrency: int = 4,
                 logprobs: bool = False):
        from huggingface_hub import InferenceClient

        self.base_url = base_url.rstrip("/")
        self.model_id = model or "default"
        self.name = name or self.model_id
        self.concurrency = concurrency
        self.logprobs = logprobs
        token = token or next((os.environ[v] for v in TOKEN_ENV_VARS if os.environ.get(v)), None)
        # The token lives only inside the client; it is never logged or put in a name or repr.
        self._client = InferenceClient(base_url=self.base_url, api_key=token, timeout=timeout_s)

    def _call(self, messages: list[dict], config: GenerationConfig, **extra):
        if self.logprobs:
            extra.update(logprobs=True, top_logprobs=TOP_ALTERNATIVES)
        if config.stop:
            extra["stop"] = list(config.stop)
        try:
            return self._client.chat_completion(
                messages=messages, model=self.model_id, max_tokens=config.max_new_tokens,
                temperature=config.temperature, top_p=config.top_p, seed=config.seed, **extra,
            )
        except Exception as error:  # network errors, HTTP errors, timeouts: one clear message
            raise ModelError(f"endpoint {self.base_url} (model {self.model_id!r}) failed: "
                             f"{type(error).__name__}: {str(error).splitlines()[0][:300]}") from error

    def _one(self, messages: list[dict], config: GenerationConfig) -> Generation:
        start = time.perf_counter()
        response = self._call(messages, config)
        elapsed = time.perf_counter() - start
        usage = response.usage
        return self._finish(response.choices[0].message.content or "",
                            int(usage.prompt_tokens) if usage else 0,
                            int(usage.completion_tokens) if usage else 0, elapsed,
                            openai_token_logprobs(response.choices[0].logprobs),
                            response.choices[0].finish_reason, config)

    @staticmethod
    def _finish(text, prompt_tokens, completion_tokens, elapsed, token_logprobs, finish,
                config: GenerationConfig) -> Generation:
        """The reply cut where corea.stopping ends it. The server was not watched token by token,
        so it may have written (and billed) more than is kept."""
        kept, reason = cut_reply(text, config)
        if reason is not None:
            text, token_logprobs = cut_generation(text, token_logprobs, lambda _: len(kept))
            finish = reason
        return Generation(text, prompt_tokens, completion_tokens, elapsed,
                          token_logprobs=token_logprobs, finish_reason=finish)

    def continue_reply(self, messages, prefix, config=GenerationConfig(), step_end=None):
        # vLLM continues a final assistant message when asked to; servers that cannot, fail
        # here with a ModelError, which step routing treats as the tier failing.
        start = time.perf_counter()
        response = self._call(messages + [{"role": "assistant", "content": prefix}], config,
                              extra_body={"continue_final_message": True,
                                          "add_generation_prompt": False})
        usage = response.usage
        text, token_logprobs = cut_generation(
            response.choices[0].message.content or "",
            openai_token_logprobs(response.choices[0].logprobs), step_end)
        return Generation(text, int(usage.prompt_tokens) if usage else 0,
                          int(usage.completion_tokens) if usage else 0,
                          time.perf_counter() - start, token_logprobs=token_logprobs)

    def generate(self, conversations, config=GenerationConfig()):
        if len(conversations) <= 1 or self.concurrency <= 1:
            return [self._one(messages, config) for messages in conversations]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda messages: self._one(messages, config), conversations))

    def stream(self, messages, config=GenerationConfig()):
        start = time.perf_counter()
        text, usage, token_logprobs, pieces, finish = "", None, [], 0, None
        chunks = self._call(messages, config, stream=True, stream_options={"include_usage": True})
        try:
            for chunk in chunks:
                if chunk.choices:
                    token_logprobs += openai_token_logprobs(chunk.choices[0].logprobs) or ()
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    pieces += 1
                    yield Generation(text, 0, 0, time.perf_counter() - start, done=False)
                if getattr(chunk, "usage", None):
                    usage = chunk.usage
        except Exception as error:
            raise ModelError(f"endpoint {self.base_url} failed while streaming: {error}") from error
        if usage is not None:
            prompt_tokens, completion_tokens = int(usage.prompt_tokens), int(usage.completion_tokens)
        else:
            # Servers that ignore include_usage (llama.cpp's) send one token per chunk, and count
            # the prompt for a one-token request. The reply is the one streamed: asking for the
            # whole reply again could get another text, since such a server answers a prompt it
            # has just evaluated from its cache (see LlamaCppModel._prepare).
            prompt_tokens = self._one(messages, replace(config, max_new_tokens=1)).prompt_tokens
            completion_tokens = pieces
        yield self._finish(text, prompt_tokens, completion_tokens, time.perf_counter() - start,
                           tuple(token_logprobs) if self.logprobs else None, finish, config)


# ------------------------------------------------------------------------------------------ loading

def _parse_endpoint(spec: str) -> tuple[str, str | None]:
    base_url, _, model = spec.partition("#")
    return base_url, model or None


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _load_gguf(path: Path, name: str, backend: str, adapter, logprobs: bool = False) -> Model:
    if backend == "llama.cpp" or (backend == "auto" and adapter is None and _has_llama_cpp()):
        return LlamaCppModel(path, name=name, logprobs=logprobs)
    embedded_model = embedded.resolve_embedded(name)
    if embedded_model is not None:  # a cached converted copy loads faster than the GGUF
        return TransformersModel(embedded.trainable_copy(name), name=name, adapter=adapter,
                                 logprobs=logprobs)
    return TransformersModel(path.parent, name=name, gguf_file=path.name, adapter=adapter,
                             logprobs=logprobs)


def load_model(spec: str, *, adapter: str | Path | None = None, backend: str = "auto",
               token: str | None = None, trust_remote_code: bool = False,
               logprobs: bool = False) -> Model:
    """The model a user names; a ModelError that says what to do when it cannot be had."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    spec = (spec or "").strip()
    if not spec:
        raise ModelError("no model named: give an embedded name (smollm2, qwen), a path, "
                         "a Hub id or an endpoint URL")
    from corea import program

    if program.is_program_spec(spec):
        inner = load_model(program.base_spec(spec), adapter=adapter, backend=backend, token=token,
                           trust_remote_code=trust_remote_code, logprobs=logprobs)
        # An adapter trained to answer by program is served that way already.
        return inner if isinstance(inner, program.ProgramAidedModel) \
            else program.ProgramAidedModel(inner)
    if spec.startswith(("http://", "https://")):
        base_url, model_id = _parse_endpoint(spec)
        return EndpointModel(base_url, model_id, token=token, logprobs=logprobs)
    embedded_model = embedded.resolve_embedded(spec)
    if embedded_model is not None:
        try:
            path = embedded_model.locate()
        except embedded.EmbeddedModelMissing as error:
            raise ModelError(str(error)) from error
        return _load_gguf(path, embedded_model.name, backend, adapter, logprobs)
    shipped = embedded.shipped_adapters().get(spec)
    path = shipped or Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        return _load_gguf(path, path.stem, backend, adapter, logprobs)
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and adapter is None:
            return _load_adapter_dir(path, backend, logprobs)
        return TransformersModel(path, name=path.name, adapter=adapter,
                                 trust_remote_code=trust_remote_code, logprobs=logprobs)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return TransformersModel(spec, name=spec, adapter=adapter,
                                 trust_remote_code=trust_remote_code, logprobs=logprobs)
    raise ModelError(
        f"unknown model {spec!r}: use an embedded name ({', '.join(embedded.EMBEDDED_MODELS)}), "
        "a shipped adapter (adapters/), "
        "a .gguf file, a local directory, a Hub id owner/name, or an endpoint http(s)://host/v1#model"
    )


def _load_adapter_dir(path: Path, backend: str, logprobs: bool = False) -> Model:
    found, base = embedded.adapter_base(path)
    if not base:
        raise ModelError(f"{path}/adapter_config.json names no base model")
    if found is not None:  # the embedded copy offline; its Hub checkpoint where it is not installed
        base = found.name if found.installed() else found.hub_id
    serving = embedded.adapter_serving(path)
    if found is not None and found.installed() and backend in ("auto", "llama.cpp") \
            and _has_llama_cpp():
        # On llama.cpp the adapter is merged into the embedded GGUF once (cached): full speed.
        model = LlamaCppModel(embedded.merged_gguf(found, path), name=f"{found.name}+{path.name}",
                              logprobs=logprobs)
    else:
        model = load_model(base, adapter=path,
                           backend="transformers" if backend == "auto" else backend,
                           logprobs=logprobs)
        model.name = f"{model.name}+{path.name}"
    model.few_shot = serving.get("few_shot", True)
    model.confidence_map = adapter_map(path)
    if serving.get("program"):  # trained to answer by program (corea.program)
        from corea.program import ProgramAidedModel

        return ProgramAidedModel(model)
    return model


_LOADED: dict[tuple, Model] = {}
_LOADED_LOCK = threading.Lock()


def get_model(spec: str, **kwargs) -> Model:
    """`load_model`, once per distinct spec per process: the app and CLI reuse loaded models."""
    # A token enters the key only as a digest, so two users' tokens never share a client.
    token = kwargs.get("token")
    token_key = hashlib.sha256(token.encode()).hexdigest() if token else None
    key = (spec, token_key, tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "token")))
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_model(spec, **kwargs)
        return _LOADED[key]
