"""How corral writes a line: `web.2 | message` (colored on a terminal) or one JSON object.

Shared by the manager (its own lines and its children's, see
`corral.manager.output`) and the web workers (their access lines, which the
manager forwards as they come: `corral.manager.output.Output.access_pipe`), and read back
by `read_lines` when the log buffer hands those lines out.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from datetime import datetime, timezone

_COLORS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
_NAME_WIDTH = 10
# Python logging's `LEVEL: ` (as corral's children configure it) and the manager's `error: `.
_LEVEL = re.compile(r"^(CRITICAL|ERROR|WARNING|INFO|DEBUG|TRACE): ", re.IGNORECASE)
# What `prefix_for` writes, colored or not: the name, padded, " |", then one space.
_PREFIXED = re.compile(r"(?:\x1b\[\d+m)?(\S+) *\|(?:\x1b\[0m)? ?(.*)", re.DOTALL)


def prefix_for(name: str, color: bool) -> str:
    text = f"{name:<{_NAME_WIDTH}} |"
    if not color:
        return text + " "
    code = _COLORS[zlib.crc32(name.split(".")[0].encode()) % len(_COLORS)]
    return f"\x1b[{code}m{text}\x1b[0m "


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def json_line(process: str, pid: int | None, line: str, level: str = "info") -> str:
    """One record (a line, or several) as a JSON object; a leading `LEVEL: ` becomes its level."""
    found = _LEVEL.match(line)
    if found:
        level, line = found.group(1).lower(), line[found.end() :]
    record = {"time": iso_time(time.time()), "process": process, "pid": pid, "level": level}
    record["message"] = line
    return json.dumps(record, ensure_ascii=False)


def read_lines(block: bytes, json_format: bool) -> list[tuple[str, str]]:
    """(process, message) of each line of `block`, lines `prefix_for` or `json_line` wrote.

    A line of neither form is kept whole, as the manager's ("corral").
    """
    found = []
    for line in block.decode("utf-8", "replace").rstrip("\n").split("\n"):
        if json_format:
            try:
                record = json.loads(line)
                found.append((str(record["process"]), str(record["message"])))
                continue
            except (ValueError, KeyError, TypeError):
                pass
        else:
            prefixed = _PREFIXED.fullmatch(line)
            if prefixed:
                found.append((prefixed[1], prefixed[2]))
                continue
        found.append(("corral", line))
    return found
