"""Training a program SLM to read the memory's notes: operations told in made-up words.

A model trained on the generated problems learns their wording, and then has no need of the notes
the strategy memory quotes: it answers as well without them. To make it learn to read them, a
share of its training prompts tell each operation with a made-up verb ("Then Kim daxes 5
pencils."), a different one in every prompt, used the same way in the notes' problems. What
"daxes" does can then only be read off a note: the program written for a problem that daxes too.
That is the skill a note from the LLM serves on questions worded unlike any training problem.
"""

from __future__ import annotations

import random

from corea.arithmetic import OPERATION_SENTENCES, retell

# Each operation's sentence (corea.arithmetic.OPERATION_SENTENCES) told with a made-up verb in
# its place ({verb}), so that nothing but the verb says which operation it is.
MADE_UP = {
    "gain": r"{verb} \1 \2",
    "lose": r"{verb} \1 \2",
    "packs": r"{verb} \1 \2 with \3 \4 in each",
    "double": r"\2 {verb} the \1",
    "share": r"\1 {verb} the \2 into \3 groups",
}
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def operations(question: str) -> set[str]:
    """The operations a generated problem tells."""
    return {name for name, pattern in OPERATION_SENTENCES.items() if pattern.search(question)}


def made_up_verbs(rng: random.Random) -> dict[str, str]:
    """A distinct made-up verb for each operation ("dabekes")."""
    verbs: list[str] = []
    while len(verbs) < len(OPERATION_SENTENCES):
        verb = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2)) + "s"
        if verb not in verbs:
            verbs.append(verb)
    return dict(zip(OPERATION_SENTENCES, verbs))


def reword(question: str, verbs: dict[str, str]) -> str:
    """`question` with each operation told by its made-up verb."""
    return retell(question, {name: replacement.replace("{verb}", verbs[name])
                             for name, replacement in MADE_UP.items()})


def covering_notes(question: str, ranked: list[str], top_k: int) -> list[str] | None:
    """Up to `top_k` of the `ranked` problems (nearest first) that, between them, tell every
    operation `question` tells, so each made-up verb can be read off a note; None when the
    nearest candidates cannot."""
    needed = operations(question)
    chosen: list[str] = []
    for candidate in ranked:
        told = operations(candidate)
        if chosen and not (told & needed):
            continue  # the first note is the nearest; the others must add what is missing
        chosen.append(candidate)
        needed -= told
        if not needed:
            return chosen
        if len(chosen) == top_k:
            return None
    return None
