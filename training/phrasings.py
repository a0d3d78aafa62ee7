"""Training a program SLM to hold up on wording it was not trained on: other phrasings.

A model trained on the generator's sentences alone learns their words: told the same problems in
other words (`arith-mix-reworded`), the program SLM trained that way is right on 39.7% of them
instead of 86.7%. A share of the training prompts therefore tell each operation in one of several
other phrasings, drawn afresh for each prompt, some with other sentence shapes than the
generator's ("Then Kim doubles the pencils."), and the notes' problems are told in the same words,
as the memory would quote an LLM's program for a problem worded like the question
(`training/configs/cpu-program-sft-rephrase.yaml`, shipped as smollm2-135m-program-rephrase:
58.3% on `arith-mix-reworded`).

None of these phrasings is one of corea.arithmetic.OTHER_WORDS, the held-out wording of
`arith-mix-reworded` (a test checks it), so that set still measures wording never trained on.
"""

from __future__ import annotations

import random

from corea.arithmetic import OPERATION_SENTENCES, retell

# For each operation of corea.arithmetic.OPERATION_SENTENCES (whose patterns capture the
# sentence's numbers and words), other ways to tell it, as regular-expression replacements.
PHRASINGS = {
    "gain": (r"gets \1 more \2", r"receives \1 extra \2", r"picks up another \1 \2",
             r"collects \1 additional \2"),
    "lose": (r"loses \1 \2", r"hands over \1 \2", r"uses up \1 \2", r"throws out \1 \2"),
    "packs": (r"gets \1 \2 with \3 \4 in each", r"picks up \1 \2 with \3 \4 in each",
              r"receives \1 \2 with \3 \4 in each", r"brings home \1 \2 with \3 \4 in each"),
    "double": (r"\2 doubles the \1", r"\2 ends up with twice as many \1",
               r"\2 multiplies the \1 by 2"),
    "share": (r"\1 divides the \2 into \3 equal piles and keeps one pile",
              r"\1 cuts the \2 into \3 equal parts and holds on to one part",
              r"\1 sorts the \2 evenly into \3 heaps and keeps a single heap"),
}


def draw(rng: random.Random) -> dict[str, str]:
    """One phrasing per operation, drawn at random."""
    return {name: rng.choice(PHRASINGS[name]) for name in OPERATION_SENTENCES}


def rephrase(question: str, phrasing: dict[str, str]) -> str:
    """`question` (a generated problem) with each operation told in `phrasing`."""
    return retell(question, phrasing)
