"""The package's version, written once (``pyproject.toml``), read from the installed package's
metadata; ``0+unknown`` when the source tree is used without being installed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ckd-distill")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
