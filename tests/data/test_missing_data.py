"""A dataset that is not there: the one line says how to get it, and a download that fails
(offline) is one line too and leaves behind no folder or file that it made."""

from __future__ import annotations

import urllib.error
from pathlib import Path

from tests.helpers import run_bad


def test_fashion_mnist_not_found_says_how_to_download(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("ckd.data.fashion_mnist.FASHION_MNIST_SEARCH_PATHS", ())
    line = run_bad(capsys, ["train", "fashion_mnist/ce", f"data.root={tmp_path}"])
    assert "not found; tried" in line and "data.download=true" in line


def offline(made: Path):
    """A stand-in for torchvision's download: it makes ``made`` (a folder holding a partial
    archive) and fails as an offline machine does."""

    def fail(*_args, **_kwargs):
        made.mkdir(parents=True, exist_ok=True)
        (made / "archive.tar.gz.part").write_bytes(b"partial")
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    return fail


def test_an_offline_download_is_one_line_and_leaves_nothing_behind(capsys, tmp_path, monkeypatch):
    root = tmp_path / "data" / "cifar"
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline(root))
    argv = ["train", "cifar100/vanilla/resnet8x4", "data.download=true"]
    out = f"run.out_dir={tmp_path / 'out'}"
    line = run_bad(capsys, [*argv, f"data.root={root}", out])
    assert f"cifar100: the download into {root} failed" in line
    assert "Name or service not known" in line and "data.download=false" in line
    assert not (tmp_path / "data").exists()  # the folders it made for the download are gone
    # into a folder that was there: what the download added goes, the rest stays
    root.mkdir(parents=True)
    (root / "mine.txt").write_text("kept")
    run_bad(capsys, [*argv, f"data.root={root}", out])
    assert [p.name for p in root.iterdir()] == ["mine.txt"]
    # Fashion-MNIST's download, the same
    fm_root = tmp_path / "fm"
    monkeypatch.setattr("ckd.data.fashion_mnist.FASHION_MNIST_SEARCH_PATHS", ())
    monkeypatch.setattr("ckd.data.fashion_mnist._download", offline(fm_root / "FashionMNIST"))
    line = run_bad(
        capsys, ["train", "fashion_mnist/ce", f"data.root={fm_root}", "data.download=true", out]
    )
    assert f"fashion_mnist: the download into {fm_root} failed" in line
    assert not fm_root.exists() and not (tmp_path / "out").exists()
