"""The fast input path and the teacher-output cache: the same images as the standard transforms,
the same augmentation distribution, exact resume, cached = live teacher logits, refusal of a
cache made for something else, and the `ckd cache` / `ckd bench` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from ckd.cli import main
from ckd.config import config_from_dict
from ckd.data import build_dataset, make_fake_cifar
from ckd.data.fast import augment_batch, draw_augmentation, memory_data
from ckd.engine import Trainer
from ckd.engine.cache import teacher_forward, verify_cache
from ckd.engine.checkpoint import load_checkpoint
from ckd.engine.loaders import MicroBatch, memory_batches
from ckd.engine.metrics import read_metrics
from ckd.engine.teacher import LiveTeacher, teacher_outputs
from ckd.errors import ConfigError
from ckd.integrity import block_sha256
from ckd.methods.base import Needs
from ckd.models import create_model
from tests.conftest import tiny_config


def quiet(_msg: str) -> None:
    pass


def micro_batches(trainer: Trainer, epoch: int) -> list[MicroBatch]:
    """The training micro-batches of ``epoch``, in order."""
    return [mb for step in trainer.task.loader.epoch(epoch) for mb in step]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("cifar"), num_classes=10, n_train=60, n_test=20)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, fake_fmnist) -> Path:
    """A resnet8 teacher trained for one epoch on the fake Fashion-MNIST (fast path)."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = tiny_config(fake_fmnist, out, data={"loader": "fast", **SMALL}, optim={"epochs": 1})
    Trainer(config_from_dict(cfg), echo=quiet).fit()
    return out / "last.pt"


#: 3 batches of 32 per epoch: enough for every property tested here, quick on 2 CPU cores.
SMALL = {"train_subset": 96, "test_subset": 50}


def student_cfg(root: Path, out: Path, teacher_path: Path, **sections) -> dict:
    """A CKD student of ``teacher_path`` on the fast path; ``sections`` update the config's."""
    base = {
        "teacher": {"name": "resnet8", "checkpoint": str(teacher_path)},
        "method": {"name": "ckd", "w_ckd": 10.0},
        "data": {"loader": "fast", **SMALL},
    }
    for key, value in sections.items():
        base[key] = value if key == "method" else {**base.get(key, {}), **value}
    return tiny_config(root, out, **base)


# --- the fast images are the standard transforms' images ------------------------------


def _standard_image(dataset, i: int, dy: int, dx: int, flip: bool, monkeypatch) -> torch.Tensor:
    """The standard transform's output for sample ``i`` with the given crop offsets and flip."""
    monkeypatch.setattr(
        T.RandomCrop, "get_params", staticmethod(lambda img, size: (dy, dx, size[0], size[1]))
    )
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([0.0 if flip else 0.99]))
    try:
        return dataset[i][0]
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_fast_images_equal_the_standard_transforms_bit_for_bit(
    name, cifar_root, fake_fmnist, monkeypatch
):
    root = cifar_root if name == "cifar10" else fake_fmnist
    dataset = build_dataset(name, str(root), train=True, verify=False)
    data = memory_data(dataset)
    n = 40
    params = draw_augmentation(data.augment, len(data), seed=3, epoch=1)
    fast = augment_batch(data, torch.arange(n), params)
    assert fast.dtype == torch.float32 and fast.shape[1:] == dataset[0][0].shape
    for i in range(n):
        dy, dx, flip = int(params.dy[i]), int(params.dx[i]), bool(params.flip[i])
        assert torch.equal(fast[i], _standard_image(dataset, i, dy, dx, flip, monkeypatch)), i
    # channels_last gives the same values; the test split (no augmentation) is exact too
    cl = augment_batch(data, torch.arange(n), params, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, fast)
    test = build_dataset(name, str(root), train=False, verify=False)
    assert torch.equal(augment_batch(memory_data(test), torch.tensor([0]), None)[0], test[0][0])


def test_fast_augmentation_has_the_standard_distribution(cifar_root):
    dataset = build_dataset("cifar10", str(cifar_root), train=True, verify=False)
    aug = memory_data(dataset).augment
    assert (aug.crop_padding, aug.flip_p, aug.size) == (4, 0.5, (32, 32))
    # support: RandomCrop.get_params draws offsets in 0 .. padded - size (9 values here)
    padded = torch.zeros(3, 40, 40)
    torch.manual_seed(0)
    standard = {T.RandomCrop.get_params(padded, (32, 32))[:2] for _ in range(2000)}
    assert standard == {(y, x) for y in range(9) for x in range(9)}
    n = 81 * 2 * 200
    p = draw_augmentation(aug, n, seed=0, epoch=0)
    assert {(int(y), int(x)) for y, x in zip(p.dy, p.dx, strict=True)} == standard
    # uniform over the 162 (dy, dx, flip) cells: chi-square, 161 degrees of freedom
    cells = np.bincount((p.dy * 18 + p.dx * 2 + p.flip.long()).numpy(), minlength=162)
    chi2 = ((cells - 200.0) ** 2 / 200.0).sum()
    assert chi2 < 161 + 6 * np.sqrt(2 * 161), chi2
    assert abs(p.flip.float().mean().item() - 0.5) < 0.01
    # a standard output is always one of the fast path's candidates of the same image
    data = memory_data(dataset)
    candidates = []
    for dy in range(9):
        for dx in range(9):
            for flip in (False, True):
                one = type(p)(torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip]))
                candidates.append(augment_batch(data, torch.tensor([0]), one)[0])
    stack = torch.stack(candidates)
    torch.manual_seed(1)
    for _ in range(50):
        image = dataset[0][0]
        assert (stack == image).flatten(1).all(1).any()


def test_each_view_depends_on_seed_epoch_and_sample_only(fake_fmnist):
    data = memory_data(build_dataset("fashion_mnist", str(fake_fmnist), train=True))
    n = len(data)
    a = draw_augmentation(data.augment, n, seed=7, epoch=2)
    b = draw_augmentation(data.augment, n, seed=7, epoch=2)
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))
    assert not torch.equal(a.dy, draw_augmentation(data.augment, n, seed=7, epoch=3).dy)
    assert not torch.equal(a.dy, draw_augmentation(data.augment, n, seed=8, epoch=2).dy)
    # whatever the order and batch size, sample i gets the same image
    views = {}
    for batch_size, order in ((32, torch.randperm(n)), (50, torch.arange(n))):
        pieces = torch.arange(n).split(batch_size)
        for images, _, index in memory_batches(data, order, iter(pieces), a):
            for img, i in zip(images, index.tolist(), strict=True):
                if i in views:
                    assert torch.equal(views[i], img)
                views[i] = img
    assert len(views) == n


# --- training on the fast path ---------------------------------------------------------


def test_fast_resume_equals_uninterrupted(tmp_path, fake_fmnist, teacher_ckpt):
    def cfg(out):
        return config_from_dict(
            student_cfg(
                fake_fmnist,
                out,
                teacher_ckpt,
                optim={"epochs": 2, "schedule": "step", "milestones": [1], "warmup_epochs": 0.5},
            )
        )

    straight = Trainer(cfg(tmp_path / "a"), echo=quiet).fit()
    first = Trainer(cfg(tmp_path / "b"), echo=quiet).fit(stop_after=1)
    assert not first["finished"]
    resumed = Trainer(cfg(tmp_path / "b"), resume=True, echo=quiet).fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert straight["last_top1"] == resumed["last_top1"]
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["train_loss"] == rb["train_loss"] and ra["test_top1"] == rb["test_top1"]


def test_given_teacher_outputs_stand_for_the_teacher_and_train(fake_fmnist, teacher_ckpt):
    cfg = config_from_dict(student_cfg(fake_fmnist, "/nonexistent/run", teacher_ckpt))
    trainer = Trainer(cfg, echo=quiet)
    images, targets, _ = micro_batches(trainer, 0)[0]
    d = trainer.distiller
    raw = d.teacher_outputs(images)  # the live teacher: ordinary tensors, no graph
    assert not raw.logits.is_inference() and not raw.logits.requires_grad
    calls = []
    d.teacher.register_forward_hook(lambda *a: calls.append(1))
    _, terms = d.forward_train(images, targets, teacher=lambda: raw)
    sum(terms.values()).backward()  # a CKD step on given outputs: the teacher did not run
    assert not calls
    _, again = d.forward_train(images, targets)  # run lazily when none are given
    assert len(calls) == 1
    torch.testing.assert_close(again["ckd"], terms["ckd"])


# --- the teacher cache -----------------------------------------------------------------


def test_cached_and_live_teacher_logits_agree(tmp_path, fake_fmnist, teacher_ckpt, capsys):
    cache_dir = tmp_path / "cache"
    cfg = student_cfg(
        fake_fmnist, tmp_path / "run", teacher_ckpt, run={"teacher_cache": str(cache_dir)}
    )
    messages = []
    trainer = Trainer(config_from_dict(cfg), echo=messages.append)  # builds, then verifies
    assert any("building it" in m for m in messages)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["logits"] == [2, 96, 10] and manifest["dtype"] == "float16"
    assert np.load(cache_dir / "logits.npy", mmap_mode="r").dtype == np.float16
    cache = trainer.teacher.cache
    teacher = trainer.distiller.teacher
    for epoch in (0, 1):
        for images, _, index in micro_batches(trainer, epoch)[:3]:
            live = teacher_forward(teacher, images, False).logits
            cached = cache.outputs(epoch, index).logits
            assert cached.dtype == torch.float32 and not cached.is_inference()
            torch.testing.assert_close(cached, live, rtol=2**-10, atol=1e-3)
            assert not torch.equal(cached, live)  # it is the fp16-rounded value
            assert torch.equal(cached, live.half().float())
    # a run trains with them (CKD steps under the cache)
    trainer.fit(stop_after=1)
    row = read_metrics(tmp_path / "run")[0]
    assert row["train_ckd"] > 0 and np.isfinite(row["train_loss"])
    # a second run with another student reuses the cache without rebuilding
    other = student_cfg(
        fake_fmnist,
        tmp_path / "run2",
        teacher_ckpt,
        student={"name": "resnet14"},
        method={"name": "kd"},
        run={"teacher_cache": str(cache_dir)},
    )
    messages.clear()
    Trainer(config_from_dict(other), echo=messages.append)
    assert not any("building" in m for m in messages)


def test_a_mismatched_cache_is_refused(tmp_path, fake_fmnist, teacher_ckpt, capsys):
    cache_dir = tmp_path / "cache"

    def cfg(**sections):
        run = {"teacher_cache": str(cache_dir), **sections.pop("run", {})}
        return student_cfg(fake_fmnist, tmp_path / "run", teacher_ckpt, run=run, **sections)

    Trainer(config_from_dict(cfg()), echo=quiet)  # builds it (2 epochs)
    other_teacher = tmp_path / "other.pt"
    torch.manual_seed(5)
    torch.save({"model": create_model("resnet8", 10, in_channels=1).state_dict()}, other_teacher)
    refusals = {
        "teacher.checkpoint_sha256": cfg(
            teacher={"name": "resnet8", "checkpoint": str(other_teacher)}
        ),
        "aug_seed": cfg(data={"aug_seed": 9}),
        "dataset.num_train": cfg(data={"train_subset": 100}),
        "dataset.sha256": cfg(run={"seed": 3}, data={"aug_seed": 0}),  # another subset
        "augmentation.crop": cfg(data={"augment": False}),
        "covers 2 epochs": cfg(optim={"epochs": 3}),
    }
    for what, bad in refusals.items():
        with pytest.raises(ConfigError, match=what.replace(".", r"\.")) as e:
            Trainer(config_from_dict(bad), echo=quiet)
        assert "\n" not in str(e.value)
    # another seed draws other augmentations: refused, unless the seeds share data.aug_seed
    # (and the training set: a subset is drawn with run.seed)
    with pytest.raises(ConfigError, match="aug_seed"):
        Trainer(config_from_dict(cfg(run={"seed": 1})), echo=quiet)
    whole = {"train_subset": None, "aug_seed": 0}
    shared = {"teacher_cache": str(tmp_path / "shared"), "out_dir": str(tmp_path / "s0")}
    Trainer(config_from_dict(cfg(run=shared, data=whole)), echo=quiet)  # builds it
    shared = {**shared, "seed": 1, "out_dir": str(tmp_path / "s1")}
    messages = []
    Trainer(config_from_dict(cfg(run=shared, data=whole)), echo=messages.append)
    assert not any("building" in m for m in messages)
    # through the CLI: one line on stderr, exit 2, nothing written
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg(data={"aug_seed": 9})))
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ckd: error: run.teacher_cache:") and err.count("\n") == 1
    # the trainer built above claimed tmp_path/run (its lock), wrote nothing; the refused run too
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".ckd.lock"]
    # a corrupted cache fails its checksum ...
    logits = np.load(cache_dir / "logits.npy", mmap_mode="r+")
    logits[0] += np.float16(0.5)
    logits.flush()
    with pytest.raises(ConfigError, match="logits of epoch 1 do not match the checksum"):
        Trainer(config_from_dict(cfg()), echo=quiet)
    # ... and one wrong from the start (checksums of the wrong values) the verification on the
    # run's own batches
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["checksums"]["blocks"]["logits"][0] = block_sha256(logits[0])
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    del logits
    with pytest.raises(ConfigError, match="differ from the live teacher"):
        Trainer(config_from_dict(cfg()), echo=quiet)
    # a folder that is not a cache is not overwritten
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a teacher cache"):
        Trainer(config_from_dict(cfg(run={"teacher_cache": str(junk)})), echo=quiet)
    assert (junk / "notes.txt").read_text() == "mine"


def test_feature_cache_and_fallback_to_the_live_teacher(tmp_path, fake_fmnist, teacher_ckpt):
    cache_dir = tmp_path / "cache"
    run = {"teacher_cache": str(cache_dir)}
    cfg = student_cfg(fake_fmnist, tmp_path / "run", teacher_ckpt, run=run, optim={"epochs": 1})
    yaml_path = tmp_path / "cfg.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump(cfg))
    assert main(["cache", "build", str(yaml_path), "--features"]) == 0
    assert main(["cache", "info", str(cache_dir)]) == 0
    assert main(["cache", "build", str(yaml_path)]) == 0  # up to date: nothing to do
    trainer = Trainer(config_from_dict(cfg), echo=quiet)
    cache = trainer.teacher.cache
    assert cache.has_features
    images, _, index = micro_batches(trainer, 0)[0]
    live = teacher_forward(trainer.distiller.teacher, images, True)
    cached = cache.outputs(0, index, features=True)
    assert len(cached.feats) == len(live.feats) == 4
    for a, b in zip((*live.feats, live.embedding), (*cached.feats, cached.embedding), strict=True):
        torch.testing.assert_close(b, a, rtol=2**-10, atol=1e-3)
    assert verify_cache(cache, trainer.distiller.teacher, [(0, images, index)], True) <= 1.0
    # a feature method with a logits-only cache runs the live teacher instead
    shutil.rmtree(cache_dir)
    assert main(["cache", "build", str(yaml_path)]) == 0
    trainer.distiller.needs = Needs(features=True)
    messages = []
    total = trainer.schedule.total
    chosen = teacher_outputs(trainer.cfg, trainer.task, total, 0, messages.append)
    assert isinstance(chosen, LiveTeacher)
    assert "running the live teacher" in messages[0]


def test_bad_speed_settings_are_one_line_config_errors(tmp_path, fake_fmnist, teacher_ckpt):
    cases = {
        "data.loader: expected one of": {"data": {"loader": "turbo"}},
        "run.channels_last: expected": {"run": {"channels_last": "sometimes"}},
        "run.teacher_cache needs data.loader=fast": {
            "data": {"loader": "standard"},
            "run": {"teacher_cache": str(tmp_path / "c")},
        },
        "data.aug_seed must be in": {"data": {"aug_seed": -1}},
    }
    for message, sections in cases.items():
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as e:
            config_from_dict(student_cfg(fake_fmnist, tmp_path / "x", teacher_ckpt, **sections))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="uses no teacher"):
        config_from_dict(
            tiny_config(
                fake_fmnist,
                tmp_path / "x",
                data={"loader": "fast"},
                run={"teacher_cache": str(tmp_path / "c")},
            )
        )


def test_bench_speed_prints_the_paths_side_by_side(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "speed", "--teacher", "resnet8", "--student", "resnet8", "--steps", "1"]
    args += ["--warmup", "1", "--rounds", "1", "--classes", "10", "--workers", "0"]
    args += [
        "--batch-size",
        "16",
        "--variants",
        "standard:ckd,fast:ckd,cache:ckd,fast:kd,fast:vanilla",
    ]
    args += ["--no-memory", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    for label in ("(a) standard", "(b) fast", "(c) fast + cache", "| KD |", "| CE only |"):
        assert label in text
    assert "CKD step vs KD step" in text
    figures = json.loads(out.read_text())
    assert {(r["path"], r["method"]) for r in figures["rows"]} >= {
        ("standard", "ckd"),
        ("fast", "ckd"),
        ("cache", "ckd"),
    }
    assert main(["bench", "speed", "--variants", "cache:vanilla"]) == 2


@pytest.mark.slow
def test_compiled_teacher_gives_the_eager_teachers_logits(tmp_path, fake_fmnist, teacher_ckpt):
    """``run.compile=teacher`` (inductor, freezing: BN folded): the same function, compiled."""
    cfg = student_cfg(fake_fmnist, tmp_path / "run", teacher_ckpt, run={"compile": "teacher"})
    trainer = Trainer(config_from_dict(cfg), echo=quiet)
    eager = create_model("resnet8", 10, in_channels=1)
    eager.load_state_dict(load_checkpoint(teacher_ckpt)["model"])
    images, _, _ = micro_batches(trainer, 0)[0]
    with torch.inference_mode():
        compiled = trainer.distiller.teacher(images)
        torch.testing.assert_close(compiled, eager.eval()(images), rtol=1e-4, atol=1e-4)
    trainer.fit(stop_after=1)
    assert np.isfinite(read_metrics(tmp_path / "run")[0]["train_loss"])
