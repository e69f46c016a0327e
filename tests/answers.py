"""What a right answer of the embedded model looks like, for checks that a wrong answer fails
(not "any non-empty text"). Kept apart from dsagent's own constants, so a change there cannot
loosen a test."""

from __future__ import annotations

import re

FRENCH = re.compile(r"\b(j'|j’|je|aime|adore|programmation|programmer|le|la|les|est)\b", re.IGNORECASE)
NAME = re.compile(r"[A-Z][A-Za-z'-]{1,15}")
"""One name as the names schema asks for it: a capital, then 1-15 letters, apostrophes or hyphens."""


def is_french_for_i_love_programming(text: str) -> bool:
    """A French rendering, not the English text echoed back (with other case or punctuation).

    >>> is_french_for_i_love_programming("I love programming!"), is_french_for_i_love_programming("J'aime programmer.")
    (False, True)
    """
    plain = re.sub(r"[^a-z ]", "", text.lower()).strip()
    return plain != "i love programming" and "love" not in plain and bool(FRENCH.search(text))


def are_names(names: list[str]) -> bool:
    """Distinct, and each one a name as the schema asks.

    >>> are_names(["Max", "Leo"]), are_names(["Max", "Max"]), are_names(["max"]), are_names(["Max Power"])
    (True, False, False, False)
    """
    return len(names) == len(set(names)) and all(NAME.fullmatch(n) for n in names)
