"""Checking a recipe's answer against what is known to be right (pure).

The demo (``dsagent.demo``) marks each answer it can vouch for and each it cannot, and
``benchmarks/recipes_eval.py`` scores a deployment over a fixed set with the same rules:

- a translation is right when its first line, normalised (case, apostrophes, quotes, spaces and
  end punctuation), equals one of the accepted translations;
- a factual answer is right when it names every expected word (whole words, any case);
- names are right in form when there are ``n`` distinct single words with a capital first
  letter (whether they suit the request is not something a rule can tell).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from .recipes import NAME_PATTERN

__all__ = ["Verdict", "check_fact", "check_names", "check_translation", "normalize"]

_QUOTES = "\"'«»“”‘’`"
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class Verdict:
    """``ok``: the answer passes; ``note``: why, in a few words, for the reader."""

    ok: bool
    note: str


def normalize(text: str) -> str:
    """Comparable form of a short answer.

    >>> normalize("  « J’aime programmer ! »\\n(That means ...)")
    "j'aime programmer"
    """
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = unicodedata.normalize("NFC", line).replace("’", "'").replace("‘", "'").lower()
    line = re.sub(r"\s+", " ", line).strip().strip(_QUOTES).strip()
    line = re.sub(r"[\s.!?;:,]+$", "", line)
    return line.strip(_QUOTES).strip()


def check_translation(answer: str, accepted: Sequence[str]) -> Verdict:
    """
    >>> check_translation("Merci !", ["Merci.", "Je vous remercie."])
    Verdict(ok=True, note='an accepted translation')
    >>> check_translation("Je m'aime le projet.", ["J'aime programmer."]).ok
    False
    """
    if normalize(answer) in {normalize(a) for a in accepted}:
        return Verdict(True, "an accepted translation")
    return Verdict(False, f"not an accepted translation (e.g. {accepted[0]!r})")


def check_fact(answer: str, expected: Sequence[str]) -> Verdict:
    """
    >>> check_fact("The capital of France is Paris.", ["Paris"])
    Verdict(ok=True, note='names Paris')
    >>> check_fact("It is Lyon.", ["Paris"]).note
    'does not name Paris'
    """
    missing = [w for w in expected if not re.search(rf"\b{re.escape(w)}\b", answer, re.IGNORECASE)]
    if missing:
        return Verdict(False, f"does not name {', '.join(missing)}")
    return Verdict(True, f"names {', '.join(expected)}")


def check_names(names: Sequence[str], n: int) -> Verdict:
    """
    >>> check_names(["Max", "Leo", "Sam"], 3)
    Verdict(ok=True, note='3 distinct names in the asked form (whether they suit is not checked)')
    >>> check_names(["Max", "Max"], 2).ok, check_names(["max power"], 1).ok
    (False, False)
    """
    if len(names) == n and len(set(names)) == n and all(_NAME.fullmatch(x) for x in names):
        return Verdict(True, f"{n} distinct names in the asked form (whether they suit is not checked)")
    return Verdict(False, f"not {n} distinct capitalised single names")
