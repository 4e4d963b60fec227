"""How a process's lines are grouped into records (`corral.manager.records`), on the outputs
Python itself writes: a logging record with its traceback, `traceback.print_exc()`, chained
exceptions, faulthandler's stack dump, and plain lines. The real processes' side is in
test_output.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from corral.manager.records import MAX_LINES, Records

PROGRAM = """
    import faulthandler
    import logging
    import sys
    import traceback

    logging.basicConfig(format="%(levelname)s: %(message)s", stream=sys.stdout)

    def fail():
        raise ValueError("inner")

    print("plain one")
    try:
        fail()
    except ValueError:
        logging.exception("logged")
    print("plain two")
    try:
        try:
            fail()
        except ValueError as error:
            raise KeyError("outer") from error
    except KeyError:
        print("printed:")
        traceback.print_exc(file=sys.stdout)
    print("plain three")
    print("dumped:")  # as faulthandler's dump of a stuck worker follows "Fatal Python error"
    sys.stdout.flush()
    faulthandler.dump_traceback(file=sys.stdout)
    print("plain four")
"""


def _records_of(program: str) -> list[list[str]]:
    written = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)], capture_output=True, timeout=30
    ).stdout
    records = Records()
    done = records.feed(written.rstrip(b"\n").split(b"\n"))
    done.append(records.release())
    return [[line.decode() for line in record] for record in done]


def test_each_traceback_and_stack_dump_is_one_record_with_the_line_that_introduces_it():
    records = _records_of(PROGRAM)
    firsts = [record[0] for record in records]
    assert firsts == [
        "plain one",
        "ERROR: logged",
        "plain two",
        "printed:",
        "plain three",
        "dumped:",
        "plain four",
    ], records
    assert records[1][-1] == "ValueError: inner"
    assert records[3][-1] == "KeyError: 'outer'"
    assert "The above exception was the direct cause of the following exception:" in records[3]
    assert records[5][1].endswith("(most recent call first):") and len(records[5]) > 2
    assert all(len(records[i]) == 1 for i in (0, 2, 4, 6)), records


def test_a_record_that_never_ends_is_let_go_at_its_size_limit():
    records = Records()
    done = records.feed([b"start"] + [b"  more"] * (MAX_LINES * 2))
    assert [len(record) for record in done] == [MAX_LINES, MAX_LINES]


def test_an_error_shown_as_its_frames_alone_is_one_record_with_its_exception_line():
    """A SyntaxError as Python shows it without a traceback (`format_exception_only`: what
    corral prints for a target that does not import): its `File` line, the source, the
    caret and the exception's line are one record, as a traceback's."""
    records = _records_of(
        """
        import traceback
        print("before")
        try:
            compile("def oops(:", "broken.py", "exec")
        except SyntaxError as error:
            print("".join(traceback.format_exception_only(error)), end="")
        print("after")
        """
    )
    (shown,) = [record for record in records if '  File "broken.py", line 1' in record]
    assert shown[-1].startswith("SyntaxError: "), records
    assert records[-1] == ["after"], records
