"""When a reply is over: stop sequences, the protocol's last line, and replies that loop.

Every backend asks `find_stop(text, config)` about the reply written so far (after each token
where it can stop early, once at the end where it cannot) and keeps `text[:cut]`:

- a stop sequence (OpenAI's `stop`): the reply ends just before the first one;
- `stop_when_done`: the reply ends after its `Confidence:` line, once that line is complete and
  follows an `Answer:` line. Nothing after it is read (the parser takes the last of each), so the
  tokens after it were only paid for;
- `stop_when_done` also cuts a reply that repeats itself (the same line for the third time, or a
  short pattern over and over within a line) where the repetition starts. Such a reply is a
  format failure (`reason == "repetition"`): the cascade defers it, whatever it says.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# A confidence line completed by its newline: "Confidence: 0.8\n". Written like the parser's
# pattern in corea.protocol (leading markup, "confidence level", full-width colon).
_CONFIDENCE_DONE = re.compile(
    r"^[ \t>*#_-]*confidence(?:[ \t]+level)?[ \t]*[:：][ \t]*(.*?)[ \t]*\r?\n", re.I | re.M)
_ANSWER_LINE = re.compile(r"^[ \t>*#_-]*(?:final[ \t]+)?answer[ \t]*[:：]", re.I | re.M)

LINE_REPEATS = 3  # a line written this many times is a loop
MAX_PERIOD = 40  # characters of the longest pattern looked for within a line
MIN_PERIODIC_RUN = 48  # characters a pattern must cover, repeats included, to count as a loop
MIN_PERIOD_REPEATS = 4


class Stop(NamedTuple):
    cut: int  # keep text[:cut]
    reason: str  # "stop" (a stop sequence or the protocol's end) or "repetition"


def find_stop(text: str, stop: tuple[str, ...] = (), stop_when_done: bool = False) -> Stop | None:
    """Where the reply written so far should end, and why; None while it should go on."""
    found = []
    for sequence in stop:
        at = text.find(sequence)
        if at >= 0:
            found.append(Stop(at, "stop"))
    if stop_when_done:
        done = _protocol_end(text)
        if done is not None:
            found.append(Stop(done, "stop"))
        loop = _repetition_start(text)
        if loop is not None:
            found.append(Stop(loop, "repetition"))
    return min(found) if found else None


def stop_of(config) -> dict:
    """The stopping part of a GenerationConfig, as keyword arguments of `find_stop`."""
    return {"stop": tuple(getattr(config, "stop", ()) or ()),
            "stop_when_done": bool(getattr(config, "stop_when_done", False))}


def stops_early(config) -> bool:
    """Whether a backend has to watch the reply as it is written."""
    options = stop_of(config)
    return bool(options["stop"]) or options["stop_when_done"]


def _protocol_end(text: str) -> int | None:
    answer = _ANSWER_LINE.search(text)
    if answer is None:
        return None
    from corea.protocol import parse_confidence

    for match in _CONFIDENCE_DONE.finditer(text, answer.end()):
        if parse_confidence(match.group(1)) is not None:
            return match.end(1)
    return None


def _repetition_start(text: str) -> int | None:
    """Where a reply starts repeating itself: at the second copy of a line written three times,
    or after the first copy of a pattern repeated within a line."""
    starts = [at for at in (_repeated_line(text), _periodic_run(text)) if at is not None]
    return min(starts) if starts else None


def _repeated_line(text: str) -> int | None:
    seen: dict[str, list[int]] = {}
    position = 0
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and line.strip():  # only complete lines are compared
            copies = seen.setdefault(line.strip(), [])
            copies.append(position)
            if len(copies) == LINE_REPEATS:
                return copies[1]
        position += len(line)
    return None


def _periodic_run(text: str) -> int | None:
    """The end of the first copy of a short pattern that fills the end of `text` (at least
    MIN_PERIOD_REPEATS copies over MIN_PERIODIC_RUN characters); None when there is none."""
    for period in range(1, MAX_PERIOD + 1):
        span = max(MIN_PERIODIC_RUN, period * MIN_PERIOD_REPEATS)
        if len(text) < span + period:
            break
        tail = text[-span:]
        if tail != text[-span - period:-period] or not tail.strip():
            continue
        start = len(text) - span - period
        while start > 0 and text[start - 1] == text[start - 1 + period]:
            start -= 1
        return start + period
    return None


def cut_reply(text: str, config) -> tuple[str, str | None]:
    """A whole reply cut where `find_stop` would have stopped it while it was written (it is
    asked at every length): the text kept, and the reason (None when it ran to its end)."""
    options = stop_of(config)
    if options["stop"] or options["stop_when_done"]:
        for end in range(1, len(text) + 1):
            found = find_stop(text[:end], **options)
            if found is not None:
                return text[:found.cut], found.reason
    return text, None
