"""The type checking's house rule that mypy does not check itself: every ``# type: ignore`` in
``src/`` names its error code(s) and says why (mypy, run by ``make lint``, refuses only one
without a code: pyproject's ``enable_error_code = ["ignore-without-code"]``)."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ckd"
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<rest>.*)$")
#: ``[code]`` or ``[code, code]``, then a comment of its own: ``  # why``
REASONED = re.compile(r"\[[a-z-]+(?:, ?[a-z-]+)*\]  # \S")


def unexplained(text: str) -> list[int]:
    """The lines of ``text`` holding a ``type: ignore`` without a code and a reason."""
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        m = IGNORE.search(line)
        if m and not REASONED.match(m["rest"]):
            lines.append(n)
    return lines


def test_the_rule_tells_a_reasoned_ignore_from_others():
    assert unexplained("x = f()  # type: ignore[arg-type]  # torch's stub is too narrow") == []
    assert unexplained("class G(b):  # type: ignore[misc, valid-type]  # made at run time") == []
    assert unexplained("x = f()  # type: ignore[arg-type]") == [1]
    assert unexplained("x = f()  # type: ignore") == [1]
    assert unexplained("x = f()  # type: ignore  # no code") == [1]


def test_every_type_ignore_in_src_has_a_code_and_a_reason():
    bare = [
        f"{path.relative_to(SRC.parent)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        for n in unexplained(path.read_text())
    ]
    assert not bare, f"a type: ignore without [code]  # reason at {', '.join(bare)}"
