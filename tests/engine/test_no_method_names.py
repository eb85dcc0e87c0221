"""The engine knows no method by name: no file of ``engine/`` or ``tasks/`` names a registered
method in its code (comments and docstrings aside)."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

import ckd.engine.trainer
import ckd.tasks.classification
from ckd.methods import METHODS

# --------------------------------------------------------------------------- no method by name


LITERAL = re.compile("^[a-zA-Z]*(" + "|".join(["'''", '"""', "'", '"']) + r")(.*)\1$", re.S)


def code_words(path: Path) -> list[tuple[int, str]]:
    """(line, word) of the identifiers and string literals of a Python file, without comments
    and docstrings (a string that is a statement of its own); ``ckd`` as the package
    (``ckd.x``) is not a word of its own. A literal counts by its whole text (``"crd"``), so
    messages in English do not trip on a method called ``at``."""
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    tokens = [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
    starts = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    words = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.type == tokenize.NAME:
            if tok.string == "ckd" and nxt is not None and nxt.string == ".":
                continue
            words.append((tok.start[0], tok.string))
        elif tok.type == tokenize.STRING:
            alone = (prev is None or prev.type in starts) and (
                nxt is None or nxt.type in (tokenize.NEWLINE, tokenize.ENDMARKER)
            )
            text = LITERAL.match(tok.string)
            if not alone and text:
                words.append((tok.start[0], text.group(2).strip()))
    return words


ENGINE = sorted(
    p
    for folder in ("engine", "tasks")
    for p in (Path(ckd.engine.trainer.__file__).parents[1] / folder).glob("*.py")
)


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_engine_names_no_method(path):
    names = {n.lower() for n in METHODS.names()}
    found = [(line, w) for line, w in code_words(path) if w.lower() in names]
    assert not found, f"{path.name} names methods at (line, word): {found}"
