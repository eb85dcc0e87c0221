"""The version is written once, in pyproject.toml, and read from the installed package's
metadata (ckd.version); CITATION.cff does not repeat it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import ckd

ROOT = Path(__file__).resolve().parents[1]


def pyproject_version() -> str:
    """``[project] version`` (a regex: tomllib is not in Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert found, "pyproject.toml's [project] table has no version"
    return found.group(1)


def test_the_package_reports_pyprojects_version():
    # fails when the installed metadata is stale (reinstall: make install) or the fallback is used
    assert ckd.__version__ == pyproject_version()


def test_a_source_tree_not_installed_reports_an_unknown_version(tmp_path):
    # -S: no site-packages, so no ckd-distill metadata; a copy of the package alone on the path
    # (src/ itself may hold the ckd_distill.egg-info an editable install wrote there)
    shutil.copytree(ROOT / "src" / "ckd", tmp_path / "ckd")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import ckd; print(ckd.__version__)"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0+unknown"


def test_citation_cff_does_not_repeat_the_version():
    text = (ROOT / "CITATION.cff").read_text()
    top_level = [line.split(":", 1)[0] for line in text.splitlines() if re.match(r"\w", line)]
    assert "version" not in top_level and "cff-version" in top_level
