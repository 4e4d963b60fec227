"""English for messages: "an int", "1 worker", "3 workers". Imports nothing."""

from __future__ import annotations

# Words that start with a vowel letter and a consonant sound ("a unicode", "a UUID").
_CONSONANT_SOUNDS = ("uni", "use", "usu", "uti", "uu", "one")


def with_article(noun: str) -> str:
    """`noun` after "a" or "an", as it is said: "an int", "a str", "a unicode", "an object"."""
    lowered = noun.lower()
    vowel = lowered[:1] in tuple("aeiou") and not lowered.startswith(_CONSONANT_SOUNDS)
    return f"{'an' if vowel else 'a'} {noun}"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and `noun`, plural unless one: "1 worker", "2 workers", "0 workers"."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
