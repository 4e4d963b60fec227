"""Durations ("30s", 2.5), sizes ("512MiB", "1G") and file modes ("660") as configuration values."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as "500ms", "30s", "1m30s"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30s' or '1m30s'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_text(text)
    else:
        raise ValueError("expected a duration such as 30, '30s' or '1m30s'")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration such as 30, '30s' or '1m30s', got {value!r}")
    if seconds < 0:
        raise ValueError(f"expected a duration of 0 or more, got {value!r}")
    return seconds


def _parse_duration_text(text: str) -> float:
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position and text[position : match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        position = match.end()
    if position == 0 or text[position:].strip():
        raise ValueError(f"expected a duration such as 30, '30s' or '1m30s', got {text!r}")
    return total


Duration = Annotated[float, BeforeValidator(parse_duration)]


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
