"""Tests of ckd.data on synthetic folders (and on Debian's Fashion-MNIST when installed)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import ckd.data as D
from ckd.data import fashion_mnist as fm
from ckd.data.cifar import CIFAR100_CLASSES
from ckd.data.idx import read_idx, write_idx
from ckd.registry import UnknownNameError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    D.make_fake_cifar(root, num_classes=100, n_train=200, n_test=100)
    D.make_fake_cifar(root, num_classes=10, n_train=200, n_test=100)
    return root


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return D.make_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=600, n_test=200)


@pytest.fixture
def no_search_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the real Debian folder out of Fashion-MNIST look-ups."""
    monkeypatch.setattr(fm, "FASHION_MNIST_SEARCH_PATHS", ())


# --- registry and info -------------------------------------------------------------


def test_registry_and_info() -> None:
    assert D.dataset_names() == [
        "cifar10", "cifar100", "fashion_mnist", "folder", "imagenet", "places365"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="is read from its data config"):
        D.dataset_info("folder")  # its facts come from the folder: resolve_dataset
    assert all(name in D.DATASETS for name in D.dataset_names())
    c100, c10, f = (D.dataset_info(n) for n in ("cifar100", "cifar10", "fashion_mnist"))
    assert (c100.num_classes, c100.in_channels, c100.image_size) == (100, 3, 32)
    assert c100.mean == (0.5071, 0.4865, 0.4409) and c100.std == (0.2673, 0.2564, 0.2762)
    assert (c10.num_classes, c10.in_channels) == (10, 3)
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2470, 0.2435, 0.2616)
    assert (f.num_classes, f.in_channels, f.image_size) == (10, 1, 32)
    assert len(f.mean) == len(f.std) == 1
    assert len(CIFAR100_CLASSES) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    i = D.dataset_info("imagenet")
    assert (i.num_classes, i.image_size, D.dataset_info("places365").num_classes) == (
        1000,
        224,
        365,
    )
    with pytest.raises(UnknownNameError, match="known: cifar10, cifar100, fashion_mnist"):
        D.dataset_info("imagenet21k")
    with pytest.raises(UnknownNameError):
        D.build_dataset("coco", None, True)
    assert issubclass(D.DataNotFoundError, FileNotFoundError)


# --- CIFAR ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
@pytest.mark.parametrize("train", [True, False])
def test_fake_cifar_loads(cifar_root: Path, name: str, train: bool) -> None:
    ds = D.build_dataset(name, str(cifar_root), train=train, verify=False)
    assert len(ds) == (200 if train else 100)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and y == ds.targets[3]
    info = D.dataset_info(name)
    assert list(ds.classes) == list(info.classes)
    counts = np.bincount(ds.targets, minlength=info.num_classes)
    assert counts.sum() == len(ds) and counts.max() - counts.min() <= 1  # balanced


def test_fake_cifar_is_real_format(cifar_root: Path) -> None:
    """Loadable like the CIFAR web page says (encoding='bytes') and like torchvision."""
    folder = cifar_root / "cifar-100-python"
    with open(folder / "train", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (200, 3072)
    assert len(entry[b"fine_labels"]) == len(entry[b"coarse_labels"]) == 200
    with open(folder / "meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"fine_label_names"][0] == b"apple"
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert set(entry) >= {"data", "labels"} and entry["data"].shape == (100, 3072)
    ds = D.build_dataset("cifar10", str(cifar_root), train=False, verify=False)
    assert ds.targets == entry["labels"]
    # data planes are R, G, B of 32x32 row-major, as in the real files
    assert np.array_equal(ds.data[7], entry["data"][7].reshape(3, 32, 32).transpose(1, 2, 0))


def test_generated_cifar_fails_md5_unless_the_caller_says_so(cifar_root: Path) -> None:
    """Generated files are read only when the caller turns the md5 check off in code; no file
    in the folder can (the old CKD_SYNTHETIC marker file is ignored)."""
    (cifar_root / "cifar-100-python" / "CKD_SYNTHETIC").write_text("skip md5 please\n")
    with pytest.raises(D.DataError, match="md5") as e:
        D.build_dataset("cifar100", str(cifar_root), train=False)
    assert "\n" not in str(e.value) and "cifar-100-python/test" in str(e.value)
    assert len(D.build_dataset("cifar100", str(cifar_root), train=False, verify=False)) == 100


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(D.DataNotFoundError, match="root is required") as e:
        D.build_dataset("cifar100", None, train=True)
    assert "\n" not in str(e.value)
    with pytest.raises(D.DataNotFoundError) as e:
        D.build_dataset("cifar10", str(tmp_path / "nowhere"), train=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "batches.meta" in msg


def test_cifar_augmentation(cifar_root: Path) -> None:
    torch.manual_seed(0)
    train = D.build_dataset("cifar100", str(cifar_root), train=True, augment=True, verify=False)
    views = [train[0][0] for _ in range(6)]
    assert any(not torch.equal(views[0], v) for v in views[1:])
    for ds in (
        D.build_dataset("cifar100", str(cifar_root), train=False, augment=True, verify=False),
        D.build_dataset("cifar100", str(cifar_root), train=True, augment=False, verify=False),
    ):
        assert torch.equal(ds[0][0], ds[0][0])


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_cifar_normalisation(cifar_root: Path, name: str) -> None:
    info = D.dataset_info(name)
    ds = D.build_dataset(name, str(cifar_root), train=False, verify=False)
    x, _ = ds[5]
    raw = torch.from_numpy(ds.data[5]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    torch.testing.assert_close(x, (raw - mean) / std)


def test_fake_cifar_is_learnable(cifar_root: Path) -> None:
    """Class-dependent images: nearest class mean on train gets most test images right."""
    train = D.build_dataset("cifar10", str(cifar_root), train=True, augment=False, verify=False)
    test = D.build_dataset("cifar10", str(cifar_root), train=False, verify=False)
    xtr = train.data.reshape(len(train), -1).astype(np.float64)
    xte = test.data.reshape(len(test), -1).astype(np.float64)
    ytr, yte = np.array(train.targets), np.array(test.targets)
    means = np.stack([xtr[ytr == c].mean(0) for c in range(10)])
    pred = ((xte[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yte).mean() > 0.9


# --- Fashion-MNIST -------------------------------------------------------------------


def test_fashion_mnist_from_root(fmnist_root: Path, no_search_paths: None) -> None:
    train = D.build_dataset("fashion_mnist", str(fmnist_root), train=True)
    test = D.build_dataset("fashion_mnist", str(fmnist_root), train=False)
    assert (len(train), len(test)) == (600, 200)
    assert train.source == fmnist_root
    x, y = test[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < 10 and y == test.targets[0]
    assert test.data.dtype == torch.uint8 and test.data.shape == (200, 28, 28)
    assert np.bincount(train.targets).tolist() == [60] * 10


def test_fashion_mnist_from_search_path(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fm, "FASHION_MNIST_SEARCH_PATHS", (str(tmp_path / "a"), str(fmnist_root)))
    ds = D.build_dataset("fashion_mnist", None, train=False)
    assert len(ds) == 200 and ds.source == fmnist_root
    # a root that lacks the files is an error, never a silent switch to the system copy
    with pytest.raises(D.DataNotFoundError) as e:
        D.build_dataset("fashion_mnist", str(tmp_path / "empty"), train=True)
    assert str(tmp_path / "empty") in str(e.value) and str(fmnist_root) not in str(e.value)


def test_fashion_mnist_torchvision_layout_uncompressed(
    fmnist_root: Path, tmp_path: Path, no_search_paths: None
) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fmnist_root.glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    ds = D.build_dataset("fashion_mnist", str(tmp_path), train=False)
    ref = D.build_dataset("fashion_mnist", str(fmnist_root), train=False)
    assert ds.source == raw and torch.equal(ds.data, ref.data) and ds.targets == ref.targets


def test_fashion_mnist_missing_lists_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = (str(tmp_path / "deb1"), str(tmp_path / "deb2"))
    monkeypatch.setattr(fm, "FASHION_MNIST_SEARCH_PATHS", places)
    root = tmp_path / "mine"
    with pytest.raises(D.DataNotFoundError) as e:
        D.build_dataset("fashion_mnist", str(root), train=True)
    msg = str(e.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg and "data.download=true" in msg
    for folder in (str(root), f"{root}/FashionMNIST/raw", f"{root}/raw"):
        assert folder in msg
    assert places[0] not in msg  # a given root is the only place looked at
    with pytest.raises(D.DataNotFoundError) as e:  # without one: the search paths, in order
        D.build_dataset("fashion_mnist", None, train=True)
    msg = str(e.value)
    for base in places:
        for folder in (base, f"{base}/FashionMNIST/raw", f"{base}/raw"):
            assert folder in msg
    assert msg.index(places[0]) < msg.index(places[1])


def test_fashion_mnist_padding_and_normalisation(fmnist_root: Path, no_search_paths: None) -> None:
    info = D.dataset_info("fashion_mnist")
    ds = D.build_dataset("fashion_mnist", str(fmnist_root), train=False)
    (mean,), (std,) = info.mean, info.std
    x, _ = ds[0]
    background = (0.0 - mean) / std
    border = torch.cat([x[0, :2].flatten(), x[0, -2:].flatten(), x[0, :, :2].flatten(),
                        x[0, :, -2:].flatten()])  # fmt: skip
    assert torch.allclose(border, torch.full_like(border, background))
    expected = (ds.data[0].float() / 255 - mean) / std
    torch.testing.assert_close(x[0, 2:30, 2:30], expected)


def test_fashion_mnist_augmentation(fmnist_root: Path, no_search_paths: None) -> None:
    torch.manual_seed(0)
    info = D.dataset_info("fashion_mnist")
    background = (0.0 - info.mean[0]) / info.std[0]
    train = D.build_dataset("fashion_mnist", str(fmnist_root), train=True, augment=True)
    views = [train[0][0] for _ in range(8)]
    assert all(v.shape == (1, 32, 32) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    # content is centred in the 28x28 (fake images have a 4-pixel blank border), so every
    # shifted/flipped view still has background on its outer 2-pixel frame
    for v in views:
        assert torch.allclose(v[0, 0], torch.full((32,), background))
    test = D.build_dataset("fashion_mnist", str(fmnist_root), train=False, augment=True)
    assert torch.equal(test[0][0], test[0][0])


@pytest.mark.skipif(
    not DEBIAN_FMNIST.is_dir(),
    reason=f"{DEBIAN_FMNIST} absent (install Debian's dataset-fashion-mnist package)",
)
def test_real_debian_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "FASHION_MNIST_SEARCH_PATHS", (str(DEBIAN_FMNIST),))
    train = D.build_dataset("fashion_mnist", None, train=True)
    test = D.build_dataset("fashion_mnist", None, train=False, augment=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    x, y = test[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10
    # the hard-coded mean/std are those of all padded 32x32 training images (pads add 0s)
    pixels = train.data.to(torch.int64)
    n = len(train) * 32 * 32
    mean = pixels.sum().item() / 255 / n
    std = (pixels.pow(2).sum().item() / 255**2 / n - mean**2) ** 0.5
    info = D.dataset_info("fashion_mnist")
    assert mean == pytest.approx(info.mean[0], abs=1e-4)
    assert std == pytest.approx(info.std[0], abs=1e-4)


# --- subset and IDX ------------------------------------------------------------------


def test_subset_balanced_deterministic(cifar_root: Path) -> None:
    ds = D.build_dataset("cifar10", str(cifar_root), train=True, augment=False, verify=False)
    sub = D.subset(ds, 50, seed=1)
    assert len(sub) == 50 and np.bincount(sub.targets, minlength=10).tolist() == [5] * 10
    assert sub.targets == [ds.targets[i] for i in sub.indices]
    assert sub[0][1] == sub.targets[0] and list(sub.classes) == list(ds.classes)
    assert D.subset(ds, 50, seed=1).indices == sub.indices
    assert D.subset(ds, 50, seed=2).indices != sub.indices
    odd = D.subset(ds, 23, seed=0)  # 2 per class + 3 extra classes with one more
    assert sorted(np.bincount(odd.targets, minlength=10).tolist()) == [2] * 7 + [3] * 3
    nested = D.subset(sub, 20)
    assert np.bincount(nested.targets, minlength=10).tolist() == [2] * 10
    assert D.subset(ds, None) is ds and D.subset(ds, len(ds)) is ds
    with pytest.raises(ValueError):
        D.subset(ds, 0)


def test_subset_explicit_targets_and_small_classes() -> None:
    targets = [0] * 2 + [1] * 50 + [2] * 50
    plain = TensorDataset(torch.arange(len(targets)))
    with pytest.raises(ValueError, match="targets"):
        D.subset(plain, 10)
    sub = D.subset(plain, 30, targets=targets)
    assert np.bincount(sub.targets).tolist() == [2, 14, 14]  # class 0's shortfall shared
    assert sub.targets == [targets[int(sub[i][0])] for i in range(len(sub))]


def test_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        assert np.array_equal(read_idx(write_idx(tmp_path / name, arr)), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad")


def test_fakes_are_deterministic(tmp_path: Path) -> None:
    a = D.make_fake_fashion_mnist(tmp_path / "a", n_train=20, n_test=10, seed=3)
    b = D.make_fake_fashion_mnist(tmp_path / "b", n_train=20, n_test=10, seed=3)
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes()
    c = D.make_fake_cifar(tmp_path / "c", num_classes=10, n_train=20, n_test=10, seed=3)
    d = D.make_fake_cifar(tmp_path / "d", num_classes=10, n_train=20, n_test=10, seed=3)
    assert (c / "cifar-10-batches-py" / "test_batch").read_bytes() == (
        d / "cifar-10-batches-py" / "test_batch"
    ).read_bytes()
