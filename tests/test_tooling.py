"""The repository's tool settings agree with each other: the ruff that pre-commit runs is the
ruff of the dev extra (`make lint` and CI), so a commit hook and CI never disagree on a format."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pre_commit_runs_the_ruff_of_the_dev_extra():
    dev = re.search(r"^dev = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert dev, "pyproject.toml has no dev extra"
    pinned = re.findall(r'"ruff==([^"]+)"', dev.group(1))
    assert len(pinned) == 1, f"the dev extra pins no single ruff version: {dev.group(1)}"
    hooks = re.findall(r'"ruff==([^"]+)"', (ROOT / ".pre-commit-config.yaml").read_text())
    assert hooks and set(hooks) == set(pinned), (hooks, pinned)
