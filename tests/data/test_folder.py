"""Your own images (data.name: folder): classes and splits from the folder, transforms chosen by
the image size, channels and normalisation, both input paths, the facts the models get, the
errors, `ckd make-folder`, and a small training through `ckd train` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms as T

from ckd.cli import main
from ckd.config import config_from_dict, load_config
from ckd.data import DataNotFoundError, ImageReadError, make_fake_image_folder, resolve_dataset
from ckd.data.fast import augment_batch, draw_augmentation, memory_data
from ckd.data.folder import SMALL_MAX, SPLIT_SEED, stratified_holdout
from ckd.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from ckd.engine.checkpoint import load_checkpoint
from ckd.errors import ConfigError
from ckd.tasks.classification import DataConfig, ModelConfig, build_model


def folder(root: Path, **kw) -> DataConfig:
    return DataConfig.from_dict({"name": "folder", "root": str(root), **kw})


def steps(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> Path:
    """3 classes of 8 train / 2 val 20x20 RGB PNGs."""
    return make_fake_image_folder(tmp_path_factory.mktemp("rgb"))


def test_classes_come_from_the_training_folder_in_sorted_order(tmp_path):
    root = make_fake_image_folder(tmp_path, num_classes=4, per_class=3, val_per_class=1)
    (root / "train" / "aaa_first").mkdir()
    Image.new("RGB", (9, 7)).save(root / "train" / "aaa_first" / "x.jpg")
    (root / "train" / "aaa_first" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()
    shutil.rmtree(root / "val" / "class_2")  # a val folder may lack classes
    spec = resolve_dataset(folder(root))
    info = spec.info
    assert info.classes == ("aaa_first", "class_0", "class_1", "class_2", "class_3")
    assert info.num_classes == 5 and info.in_channels == 3
    train = spec.build(None, True, True, False)
    test = spec.build(None, False, False, False)
    assert len(train) == 13 and sorted(set(train.targets)) == [0, 1, 2, 3, 4]
    assert train.targets.count(0) == 1  # the .txt is not an image
    assert len(test) == 3 and 3 not in test.targets  # class_2 is index 3
    # a deeper tree inside a class folder counts too
    deep = root / "train" / "class_0" / "more" / "deeper"
    deep.mkdir(parents=True)
    Image.new("RGB", (9, 7)).save(deep / "y.png")
    assert len(resolve_dataset(folder(root)).build(None, True, True, False)) == 14


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"no folder .*nowhere/train.*ckd make-folder"):
        resolve_dataset(folder(tmp_path / "nowhere"))
    root = make_fake_image_folder(tmp_path / "a", per_class=2, val_per_class=1)
    (root / "val" / "zebra").mkdir()
    Image.new("RGB", (9, 7)).save(root / "val" / "zebra" / "z.png")
    with pytest.raises(DataNotFoundError, match=r"val/zebra is not a class of the training"):
        resolve_dataset(folder(root))
    root = make_fake_image_folder(tmp_path / "b", per_class=2, val_per_class=1)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"class folder .*train/empty holds no image"):
        resolve_dataset(folder(root))
    root = make_fake_image_folder(tmp_path / "c", per_class=2, val_per_class=None)
    with pytest.raises(DataNotFoundError, match=r"no folder .*c/val.*data.val_fraction"):
        resolve_dataset(folder(root))
    root = make_fake_image_folder(tmp_path / "d", per_class=2, val_per_class=1)
    with pytest.raises(ConfigError, match=r"data.val_fraction=0.2: .*d/val exists"):
        resolve_dataset(folder(root, val_fraction=0.2))


def test_val_fraction_holds_out_each_class_with_a_fixed_seed(tmp_path):
    root = make_fake_image_folder(tmp_path, num_classes=3, per_class=10, val_per_class=None)
    (root / "train" / "class_1" / "0.png").unlink()  # 9 images in class 1
    (root / "train" / "class_3").mkdir()  # one image only: never held out
    Image.new("RGB", (20, 20)).save(root / "train" / "class_3" / "only.png")
    spec = resolve_dataset(folder(root, val_fraction=0.25))
    train = spec.build(None, True, False, False)
    test = spec.build(None, False, False, False)
    counts = np.bincount(test.targets, minlength=4).tolist()
    assert counts == [2, 2, 2, 0]  # round(0.25 * 10) = 2, round(0.25 * 9) = 2, class of one: 0
    assert sorted(train.paths + test.paths) == sorted(
        str(p) for p in (root / "train").rglob("*.png")
    )
    assert not set(train.paths) & set(test.paths)
    # the same held-out files every time, whatever the run's seed (data has none here)
    again = resolve_dataset(folder(root, val_fraction=0.25)).build(None, False, False, False)
    assert again.paths == test.paths
    # stratified_holdout: at least one and never all of a class
    held = stratified_holdout([0] * 3 + [1] * 2, 0.01, SPLIT_SEED)
    assert np.bincount([([0] * 3 + [1] * 2)[i] for i in held]).tolist() == [1, 1]
    held = stratified_holdout([0] * 3, 0.99)
    assert len(held) == 2


def test_small_images_get_cifar_style_crops_and_large_ones_imagenet_style(tmp_path):
    root = make_fake_image_folder(tmp_path, per_class=2, val_per_class=1, size=(30, 20))
    small = resolve_dataset(folder(root, image_size=SMALL_MAX))
    train = small.build(None, True, True, False)
    assert steps(train.prepare) == ["Resize", "CenterCrop"]
    assert steps(train.transform) == [
        "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"
    ]  # fmt: skip
    assert train.transform.transforms[0].padding == SMALL_MAX // 8
    assert train[0][0].shape == (3, SMALL_MAX, SMALL_MAX)
    test = small.build(None, False, False, False)
    assert steps(test.transform) == ["ToTensor", "Normalize"]
    large = resolve_dataset(folder(root, image_size=SMALL_MAX + 1))
    train = large.build(None, True, True, False)
    assert train.prepare is None and steps(train.transform)[0] == "RandomResizedCrop"
    assert train[0][0].shape == (3, SMALL_MAX + 1, SMALL_MAX + 1)
    test = large.build(None, False, False, False)
    assert steps(test.prepare) == ["Resize", "CenterCrop"]
    assert test[0][0].shape == (3, SMALL_MAX + 1, SMALL_MAX + 1)
    # without data.image_size: 32 for small images, 224 for photos (shorter side > 64)
    assert resolve_dataset(folder(root)).info.image_size == 32
    photos = make_fake_image_folder(tmp_path / "photos", per_class=1, val_per_class=1, size=65)
    assert resolve_dataset(folder(photos)).info.image_size == 224


def test_channels_and_normalisation(tmp_path):
    grey = make_fake_image_folder(tmp_path / "grey", per_class=2, val_per_class=1, channels=1)
    info = resolve_dataset(folder(grey)).info
    assert info.in_channels == 1 and info.mean == (0.449,) and info.std == (0.226,)
    x, _ = resolve_dataset(folder(grey)).build(None, False, False, False)[0]
    assert x.shape == (1, 32, 32)
    # a colour image among the first of the classes: RGB; data.channels forces either
    Image.new("RGB", (20, 20), (200, 10, 10)).save(grey / "train" / "class_1" / "0.png")
    assert resolve_dataset(folder(grey)).info.in_channels == 3
    forced = resolve_dataset(folder(grey, channels=1))
    assert forced.info.in_channels == 1
    assert forced.build(None, True, True, False)[2][0].shape == (1, 32, 32)  # converted to L
    rgb = make_fake_image_folder(tmp_path / "rgb", per_class=2, val_per_class=1)
    info = resolve_dataset(folder(rgb)).info
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)
    own = resolve_dataset(folder(rgb, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))
    assert own.info.mean == (0.5, 0.5, 0.5)
    x, _ = own.build(None, False, False, False)[0]
    img = Image.open(sorted((rgb / "val" / "class_0").iterdir())[0]).convert("RGB")
    expected = (T.ToTensor()(T.CenterCrop(32)(T.Resize(32)(img))) - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-6)
    with pytest.raises(ConfigError, match=r"data.mean / data.std need 1 value"):
        resolve_dataset(folder(grey, channels=1, mean=[0.5, 0.5, 0.5], std=[1.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.image_size=64"], "data.image_size is for data.name=folder"),
        (["data.name=folder", "data.root=null"], "data.root: data.name=folder needs the folder"),
        (["data.name=folder", "data.root=x", "data.channels=2"], "data.channels must be 1"),
        (["data.name=folder", "data.root=x", "data.val_fraction=1.5"], "data.val_fraction must"),
        (["data.name=folder", "data.root=x", "data.image_size=4"], "data.image_size must be >= 8"),
        (["data.name=folder", "data.root=x", "data.mean=[0.5]"], "data.mean and data.std go"),
        (
            ["data.name=folder", "data.root=x", "data.mean=[0.5]", "data.std=[0]"],
            "data.std must be > 0",
        ),
        (
            [
                "data.name=folder",
                "data.root=x",
                "data.channels=3",
                "data.mean=[0.5]",
                "data.std=[1]",
            ],
            "data.mean needs 3 value",
        ),  # fmt: skip
    ],
)
def test_folder_keys_are_checked_with_the_config(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fashion_mnist/ce", overrides)


def test_a_corrupt_image_is_one_line_naming_the_file(tmp_path):
    root = make_fake_image_folder(tmp_path, per_class=2, val_per_class=1)
    bad = root / "train" / "class_1" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    train = resolve_dataset(folder(root)).build(None, True, True, False)
    with pytest.raises(ImageReadError, match=rf"cannot read image {bad}"):
        train[train.paths.index(str(bad))]
    truncated = root / "train" / "class_0" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageReadError, match=rf"cannot read image {truncated}"):
        train[train.paths.index(str(truncated))]


def test_corrupt_image_in_a_dataloader_worker_is_still_one_line(tmp_path, capsys):
    root = make_fake_image_folder(tmp_path, per_class=4, val_per_class=1)
    bad = root / "train" / "class_2" / "0.png"
    bad.write_bytes(b"garbage")
    cfg = {
        "data": {"name": "folder", "root": str(root), "batch_size": 4, "num_workers": 1},
        "student": {"name": "resnet8"},
        "method": {"name": "vanilla"},
        "optim": {"epochs": 1},
        "run": {"out_dir": str(tmp_path / "run"), "tensorboard": False, "device": "cpu"},
    }
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(cfg_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ckd: error: folder: cannot read image")
    assert str(bad) in err


def splits(cfg: DataConfig) -> tuple:
    """The training (augmented) and test splits of a folder data config."""
    spec = resolve_dataset(cfg)
    return spec.build(None, True, True, False), spec.build(None, False, False, False)


def test_fast_path_holds_the_same_images_as_the_standard_one(tmp_path):
    root = make_fake_image_folder(tmp_path, per_class=4, val_per_class=2, size=(27, 23))
    train_split, test_split = splits(folder(root, image_size=24))
    for split in (train_split, test_split):
        mem = memory_data(split, "cpu", "folder")
        assert mem.images.shape == (len(split), 3, 24, 24)
        unaugmented = augment_batch(mem, torch.arange(len(split)), None)
        for i in range(len(split)):
            # the prepared image, converted and normalised as the standard test transform does
            want = T.Compose(split.transform.transforms[-2:])(split.prepared(i))
            assert torch.equal(unaugmented[i], want)
    train = memory_data(train_split, "cpu", "folder")
    a = train.augment
    assert (a.crop, a.crop_padding, a.size, a.flip_p) == (True, 3, (24, 24), 0.5)
    # with a crop of the padded image and a flip, an image equals the standard transform's
    params = draw_augmentation(a, len(train), seed=1, epoch=0)
    fast = augment_batch(train, torch.arange(len(train)), params)
    for i in range(len(train)):
        img = T.functional.pad(train_split.prepared(i), 3, fill=0)
        img = T.functional.crop(img, int(params.dy[i]), int(params.dx[i]), 24, 24)
        if params.flip[i]:
            img = T.functional.hflip(img)
        want = T.Compose(train_split.transform.transforms[-2:])(img)
        assert torch.equal(fast[i], want)


def test_fast_path_refuses_imagenet_style_crops_and_what_does_not_fit(tmp_path, monkeypatch):
    root = make_fake_image_folder(tmp_path, per_class=2, val_per_class=1)
    train, test = splits(folder(root, image_size=96))
    with pytest.raises(ConfigError, match=r"data.loader=fast: folder .*random resized crops"):
        memory_data(train, "cpu", "folder")
    memory_data(test, "cpu", "folder")  # the test split is resized once: it fits
    import ckd.data.fast as fast

    monkeypatch.setattr(fast, "free_memory", lambda device: 1000)
    train, _ = splits(folder(root))
    with pytest.raises(ConfigError, match=r"need 0.0 GiB as uint8, more than 50% of the"):
        memory_data(train, "cpu", "folder")


def test_class_count_channels_and_size_reach_the_models(tmp_path):
    root = make_fake_image_folder(tmp_path, num_classes=5, per_class=1, val_per_class=1, channels=1)
    info = resolve_dataset(folder(root, image_size=64)).info

    model = build_model(ModelConfig("tv:resnet18"), info)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 5)
    # the CIFAR zoo's resnet8 is made for 32x32 images: said when it is built
    with pytest.raises(ConfigError, match=r"resnet8 does not run on folder images \(1x64x64\)"):
        build_model(ModelConfig("resnet8"), info)


def test_make_folder_writes_the_layout_and_refuses_to_overwrite(tmp_path, fake_fmnist, capsys):
    out = tmp_path / "fm"
    args = ["make-folder", "--out", str(out), "--source", str(fake_fmnist)]
    assert main([*args, "--train-per-class", "5", "--val-per-class", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    classes = sorted(p.name for p in (out / "train").iterdir())
    assert len(classes) == 10 and "T-shirt_top" in classes and "Ankle_boot" in classes
    assert all(len(list((out / "train" / c).glob("*.png"))) == 5 for c in classes)
    assert all(len(list((out / "val" / c).glob("*.png"))) == 2 for c in classes)
    img = Image.open(next((out / "val" / "Trouser").iterdir()))
    assert img.size == (28, 28) and img.mode == "L"
    before = sorted(str(p) for p in out.rglob("*"))
    assert main([*args, "--train-per-class", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(str(p) for p in out.rglob("*")) == before
    assert main([*args, "--train-per-class", "1", "--val-per-class", "1", "--force"]) == 0
    assert len(list((out / "train").rglob("*.png"))) == 10
    # --force replaces only what make-folder wrote: a folder of the user's stays as it was
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    (mine / "thesis.tex").write_text("mine")
    assert main(["make-folder", "--out", str(mine), "--source", str(fake_fmnist), "--force"]) == 2
    assert "replaces only a folder ckd make-folder wrote" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex", "train"]
    assert main(["make-folder", "--out", str(tmp_path / "x"), "--val-per-class", "0"]) == 2
    assert not (tmp_path / "x").exists()


def test_a_small_training_on_a_made_folder_runs_end_to_end(tmp_path, fake_fmnist, capsys):
    """`ckd make-folder`, then the shipped folder config through `ckd train` on both input
    paths, then `ckd eval` of the run."""
    root = tmp_path / "fm"
    assert main(["make-folder", "--out", str(root), "--source", str(fake_fmnist),
                 "--train-per-class", "6", "--val-per-class", "2"]) == 0  # fmt: skip
    common = [
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=20",
        "optim.epochs=1",
        "run.tensorboard=false",
        "run.device=cpu",
    ]
    results = {}
    for loader in ("standard", "fast"):
        out = tmp_path / loader
        argv = ["train", "folder/vanilla", *common, f"data.loader={loader}", f"run.out_dir={out}"]
        assert main([*argv, "--json"]) == 0
        results[loader] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        ckpt = load_checkpoint(out / "last.pt")
        assert ckpt["model"]["fc.weight"].shape == (10, 64)  # 10 classes from the folder
        assert ckpt["model"]["conv1.weight"].shape[1] == 1  # greyscale: one input channel
        assert ckpt["dataset"]["classes"][0] == "Ankle_boot"
    assert all(0 <= r["last_top1"] <= 100 for r in results.values())
    assert main(["eval", str(tmp_path / "fast" / "last.pt")]) == 0
    out = capsys.readouterr().out
    assert "resnet8 on folder test (the whole split, 20 images)" in out
    assert f"top-1 {results['fast']['last_top1']:.2f}" in out


def test_shipped_folder_configs_are_the_documented_flow():
    base = load_config("folder/vanilla")
    assert (base.data.name, base.data.root, base.data.options.image_size) == (
        "folder", "data/fmnist_folder", 32
    )  # fmt: skip
    teacher = load_config("folder/teacher_resnet18")
    assert teacher.student.name == "tv:resnet18" and teacher.student.pretrained
    assert teacher.method.name == "vanilla"
    for name, student in (("folder/ckd_resnet", "resnet8"), ("folder/ckd_deit", "timm:")):
        cfg = load_config(name, [f"teacher.checkpoint={__file__}"])
        assert cfg.student.name.startswith(student) and cfg.method.name == "ckd"
        assert cfg.teacher.name == "tv:resnet18"
    raw = config_from_dict(
        {"data": {"name": "folder", "root": "x"}, "student": {"name": "resnet8"},
         "method": {"name": "vanilla"}}
    )  # fmt: skip
    assert raw.data.options.image_size is None
