"""Durations ("30s", 2.5), sizes ("512MiB", "1G") and file modes ("660") as configuration values."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


EXPECTED_DURATION = "expected a duration such as 30, '30s' or '1m30s'"


def parse_duration(value: Any) -> float:
    """Seconds, 0 or more, from a number or a string such as "500ms", "30s", "1m30s".

    Raises ValueError naming what was given and what was expected.
    """
    seconds = _seconds(value)
    if seconds < 0:
        raise ValueError(f"expected a duration of 0 or more, got {value!r}")
    return seconds


def parse_positive_duration(value: Any) -> float:
    """Seconds, more than 0, as `parse_duration` reads them; ValueError otherwise."""
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration greater than 0, got {value!r}")
    return seconds


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{EXPECTED_DURATION}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_text(text)
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{EXPECTED_DURATION}, got {value!r}")
    return seconds


def _parse_duration_text(text: str) -> float:
    """Seconds from "1m30s"; "-1s" is read too, to be refused for its sign, not its form."""
    sign, rest = (-1.0, text[1:]) if text.startswith("-") else (1.0, text)
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(rest):
        if match.start() != position and rest[position : match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        position = match.end()
    if position == 0 or rest[position:].strip():
        raise ValueError(f"{EXPECTED_DURATION}, got {text!r}")
    return sign * total


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, 0 or more."""
PositiveDuration = Annotated[float, BeforeValidator(parse_positive_duration)]
"""Seconds, more than 0."""


def parse_file_mode(value: Any) -> int:
    """Permission bits from octal text ("660", "0660", "0o660") or a number (0o660 in TOML).

    Raises ValueError for anything else, or for bits beyond 0o777.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("expected an octal file mode such as '660'")
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            value = int(text, 8)
        except ValueError:
            raise ValueError(f"expected an octal file mode such as '660', got {text!r}") from None
        if not 0 <= value <= 0o777:
            raise ValueError(f"expected a file mode from 000 to 777 (octal), got {value:o}")
    elif not 0 <= value <= 0o777:  # a TOML number: 660 is decimal, 0o1224
        raise ValueError(
            f"expected a file mode from 000 to 777 (octal), got the number {value} "
            f"(0o{value:o}): write it as octal text, '660', or as a TOML octal number, 0o660"
        )
    return value


FileMode = Annotated[int, BeforeValidator(parse_file_mode)]


def format_size(size: int) -> str:
    """A byte count as people read it: 512MiB, 1.5GiB."""
    amount = float(size)
    if amount < 1024:
        return f"{size}B"
    for unit in ("KiB", "MiB"):
        amount /= 1024
        if amount < 1024:
            return f"{amount:.1f}{unit}"
    amount /= 1024
    return f"{amount:.1f}GiB"
