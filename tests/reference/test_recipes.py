"""The shipped reference recipes train with the reference code's optimiser semantics: the
learning rate updated once per epoch (``optim.lr_update: epoch``) where the reference steps its
scheduler once per epoch, and the per-step default left to the other configs."""

from __future__ import annotations

import pytest
import torch

from ckd.config import OptimConfig, load_config
from ckd.config_files import CONFIG_DIR, read_yaml, shipped_configs
from ckd.engine.schedule import Schedule

REFERENCE_FAMILIES = ("cifar100/", "imagenet/", "places365/")


def torch_cosine_per_epoch(lr: float, epochs: int, min_lr: float) -> list[float]:
    """The reference's rates: ``CosineAnnealingLR(T_max=epochs)`` stepped after each epoch."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=min_lr)
    rates = []
    for _ in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def rates(o: OptimConfig, steps_per_epoch: int) -> list[list[float]]:
    """The learning rate of every step, epoch by epoch."""
    schedule = Schedule.of(o, steps_per_epoch, batch_size=64)
    return [
        [schedule(e * steps_per_epoch + i) for i in range(steps_per_epoch)] for e in range(o.length)
    ]


@pytest.mark.parametrize("min_lr", [0.0, 0.001])
def test_per_epoch_cosine_is_torchs_scheduler_stepped_once_per_epoch(min_lr):
    o = OptimConfig(epochs=30, lr=0.05, schedule="cosine", min_lr=min_lr, lr_update="epoch")
    want = torch_cosine_per_epoch(0.05, 30, min_lr)
    for epoch, got in enumerate(rates(o, 7)):
        assert len(set(got)) == 1  # constant within the epoch
        assert got[0] == pytest.approx(want[epoch], rel=1e-12, abs=1e-15)
    per_step = rates(OptimConfig(epochs=30, lr=0.05, schedule="cosine", min_lr=min_lr), 7)
    assert per_step[3][6] < per_step[3][0] == pytest.approx(want[3], rel=1e-12)


def test_step_schedule_is_the_same_either_way():
    kw = {"epochs": 240, "lr": 0.05, "schedule": "step", "milestones": [150, 180, 210]}
    assert rates(OptimConfig(**kw), 5) == rates(OptimConfig(**kw, lr_update="epoch"), 5)


def test_an_iteration_schedule_has_no_epochs_to_hold_the_rate_over():
    kw = {"epochs": None, "iters": 100, "lr": 0.05, "schedule": "cosine", "milestones": []}
    assert rates(OptimConfig(**kw), 10) == rates(OptimConfig(**kw, lr_update="epoch"), 10)


def test_reference_recipes_update_the_lr_per_epoch_and_the_others_per_step():
    names = shipped_configs()
    over = [f"teacher.checkpoint={__file__}"]  # any file: validation only
    seen = set()
    for name in names:
        has_teacher = "teacher" in read_yaml(CONFIG_DIR / f"{name}.yaml")
        cfg = load_config(name, over if has_teacher else [])
        family = next((f for f in REFERENCE_FAMILIES if name.startswith(f)), None)
        assert cfg.optim.lr_update == ("epoch" if family else "step"), name
        seen.add(family)
    assert seen >= set(REFERENCE_FAMILIES)
    assert OptimConfig().lr_update == "step"  # configs that do not say keep today's behaviour


def test_dkd_resnet50_vgg8_is_the_reference_recipe():
    """The CKD code's configs/cifar100/dkd/dkd.yaml: ResNet50 -> vgg8, batch 64, lr 0.01,
    240 epochs x0.1 at 150/180/210, weight decay 5e-4, cfg.py's DKD defaults."""
    cfg = load_config("cifar100/dkd/ResNet50_vgg8", [f"teacher.checkpoint={__file__}"])
    assert (cfg.teacher.name, cfg.student.name, cfg.method.name) == ("ResNet50", "vgg8", "dkd")
    o, m = cfg.optim, cfg.method.options
    assert (cfg.data.batch_size, o.lr, o.epochs, o.milestones) == (64, 0.01, 240, [150, 180, 210])
    assert (o.momentum, o.weight_decay, o.schedule, o.lr_update) == (0.9, 5e-4, "step", "epoch")
    assert (m.w_ce, m.alpha, m.beta, m.temperature, m.warmup_epochs) == (1.0, 1.0, 8.0, 4.0, 20)


# The reference's configs/{imagenet,places365}/<pair>/{ckd,kd,dkd}.yaml (cfg.py's values where a
# file sets none, e.g. DKD's alpha 1.0): (batch, lr, epochs, schedule, method options)
LARGE = {
    "imagenet/ckd": (512, 0.2, 200, "cosine", {"w_ce": 1.0, "w_ckd": 10.0, "temperature": 1.0}),
    "imagenet/kd": (512, 0.2, 100, "step", {"w_ce": 0.5, "w_kd": 0.5, "temperature": 1.0}),
    "imagenet/dkd": (512, 0.2, 100, "step", {"w_ce": 1.0, "alpha": 1.0, "temperature": 1.0}),
    "places365/ckd": (256, 0.2, 100, "step", {"w_ce": 1.0, "w_ckd": 10.0, "temperature": 1.0}),
    "places365/kd": (256, 0.2, 100, "step", {"w_ce": 0.5, "w_kd": 0.5, "temperature": 1.0}),
    "places365/dkd": (256, 0.2, 100, "step", {"w_ce": 1.0, "alpha": 1.0, "temperature": 1.0}),
}
DKD_LARGE = {"resnet34_resnet18": 0.5, "resnet50_MobileNetV1": 2.0}  # beta


@pytest.mark.parametrize("pair", list(DKD_LARGE))
@pytest.mark.parametrize("recipe", list(LARGE))
def test_imagenet_and_places365_recipes_are_the_references(recipe, pair):
    cfg = load_config(f"{recipe}/{pair}", [f"teacher.checkpoint={__file__}"])
    batch, lr, epochs, schedule, options = LARGE[recipe]
    if recipe == "places365/dkd" and pair == "resnet50_MobileNetV1":
        lr = 0.1  # configs/places365/r50_mv1/dkd.yaml
    o = cfg.optim
    assert (cfg.data.batch_size, o.lr, o.epochs, o.schedule) == (batch, lr, epochs, schedule)
    assert (o.weight_decay, o.momentum, o.lr_update) == (1e-4, 0.9, "epoch")
    if schedule == "step":
        assert (o.milestones, o.gamma) == ([30, 60, 90], 0.1)
    assert {k: getattr(cfg.method.options, k) for k in options} == options
    if recipe.endswith("dkd"):
        assert (cfg.method.options.beta, cfg.method.options.warmup_epochs) == (DKD_LARGE[pair], 1)


def test_detection_dkd_defaults_are_the_reference_detection_codes():
    """The CKD code's detection/model/config.py (KD.DKD: alpha 1, beta 0.25, T 1; its DKD and
    ReviewDKD recipes keep them) and rcnn_dkd_loss (weight 1, no warm-up)."""
    over = [f"teacher.checkpoint={__file__}", "method={name: dkd}"]
    o = load_config("detection/coco/mask_rcnn_r101_r18_ckd_1x", over).method.options
    assert (o.w_ce, o.alpha, o.beta, o.temperature) == (1.0, 1.0, 0.25, 1.0)
    assert (o.warmup_epochs, o.warmup_iters) == (0, 0)
