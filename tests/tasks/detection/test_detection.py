"""Detection distillation: the RoI-level losses, gradients, teacher freezing, data handling and
the shipped COCO configs. Tiny detectors on 64x64 generated shapes, one thread."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ckd.config import config_from_dict, load_config
from ckd.config_files import CONFIG_DIR, read_yaml, shipped_configs
from ckd.errors import ConfigError
from ckd.losses import ckd_loss, dkd_loss, kd_loss
from ckd.tasks.detection.data import CocoDetection, collate
from ckd.tasks.detection.evaluate import STATS, evaluate_detector
from ckd.tasks.detection.models import build_detector
from ckd.tasks.detection.shapes import make_shapes
from ckd.tasks.detection.task import build_distiller
from ckd.tasks.detection.view import capture
from tests.tasks.detection.helpers import (
    CKD_REVIEW,
    NUM_CLASSES,
    random_teacher,
    teacher_section,
    tiny_config,
)

# pycocotools 2.0 with NumPy 2: a warning from inside the library, harmless
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # detection's many small ops: fastest single-threaded
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), 12, 6, size=64, max_shapes=2)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return random_teacher(tmp_path_factory.mktemp("teacher"), "mask_rcnn")


def distiller_and_batch(
    shapes: Path, teacher_file: Path, tmp_path: Path, method: dict, arch: str = "mask_rcnn"
):
    cfg = tiny_config(shapes, tmp_path, method, teacher_section(teacher_file))
    cfg["detector"]["arch"] = arch
    cfg = config_from_dict(cfg)
    torch.manual_seed(0)
    d = build_distiller(cfg, NUM_CLASSES, 12)
    d.train()
    data = CocoDetection(shapes, "train2017", train=True, masks=True)
    images, targets = collate([data[0], data[1]])
    return d, images, targets


def test_roi_ckd_is_ckd_loss_of_teacher_and_student_logits_on_the_same_proposals(
    shapes, teacher_file, tmp_path
):
    d, images, targets = distiller_and_batch(shapes, teacher_file, tmp_path, CKD_REVIEW)
    with capture(d.student) as cap:
        _, terms = d.forward_train(images, targets)
    proposals, sizes = cap.proposals, cap.images.image_sizes
    assert cap.class_logits.shape == (sum(len(p) for p in proposals), NUM_CLASSES)
    assert cap.class_logits.shape[0] == 2 * 16  # B = the RoIs sampled for the student
    with torch.no_grad():
        s = d.student.roi_heads
        s_feats = d.student.backbone(cap.images.tensors)
        student = s.box_predictor(s.box_head(s.box_roi_pool(s_feats, proposals, sizes)))[0]
        # the teacher's own transform and normalisation on the raw images (same size here)
        t = d.teacher
        t_images, _ = t.transform(images)
        assert t_images.image_sizes == sizes
        t_feats = t.backbone(t_images.tensors)
        h = t.roi_heads
        teacher = h.box_predictor(h.box_head(h.box_roi_pool(t_feats, proposals, sizes)))[0]
    torch.testing.assert_close(student, cap.class_logits.detach(), rtol=1e-4, atol=1e-5)
    expected = 0.1 * ckd_loss(student, teacher, temperature=1.0)
    assert terms["ckd"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert not torch.allclose(student, teacher)  # a real comparison, not of a tensor to itself


def test_every_term_reaches_the_student_and_the_teacher_never_changes(
    shapes, teacher_file, tmp_path
):
    d, images, targets = distiller_and_batch(shapes, teacher_file, tmp_path, CKD_REVIEW)
    before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    _, terms = d.forward_train(images, targets)
    assert set(terms) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_mask",
        "ckd",
        "reviewkd",
    }
    params = [p for p in d.student.parameters() if p.requires_grad]
    for name, value in terms.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    optimizer = torch.optim.SGD([p for p in d.trainable_parameters() if p.requires_grad], lr=0.1)
    assert not any(
        p is q for p in optimizer.param_groups[0]["params"] for q in d.teacher.parameters()
    )
    torch.stack(list(terms.values())).sum().backward()
    optimizer.step()
    assert not d.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())
    for k, v in d.teacher.state_dict().items():  # weights and BN buffers alike
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("method,term", [("kd", "kd"), ("dkd", "dkd")])
def test_kd_and_dkd_baselines_on_the_roi_logits(shapes, teacher_file, tmp_path, method, term):
    options = {"warmup_iters": 0} if method == "dkd" else {}
    if method == "kd":  # Faster R-CNN here, Mask R-CNN elsewhere
        teacher_file = random_teacher(tmp_path, "faster_rcnn")
    arch = "faster_rcnn" if method == "kd" else "mask_rcnn"
    d, images, targets = distiller_and_batch(
        shapes, teacher_file, tmp_path, {"name": method, **options}, arch
    )
    with capture(d.student) as cap:
        _, terms = d.forward_train(images, targets)
    s, t = cap.class_logits, d.teacher_outputs(images, cap).logits
    expected = kd_loss(s, t, 1.0) if method == "kd" else dkd_loss(s, t, cap.labels, 1.0, 0.25, 1.0)
    assert terms[term].item() == pytest.approx(expected.item(), rel=1e-5)
    assert cap.labels.max() >= 1 and (cap.labels == 0).any()  # foreground and background RoIs
    grads = torch.autograd.grad(
        terms[term], [p for p in d.student.parameters() if p.requires_grad], allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if arch == "faster_rcnn":  # box AP alone, by COCOeval, in eval mode at the test size
        val = CocoDetection(shapes, "val2017")
        loader = torch.utils.data.DataLoader(val, batch_size=6, collate_fn=collate)
        d.eval()
        metrics = evaluate_detector(d.student, loader, torch.device("cpu"))
        assert set(metrics) == {f"box_{k}" for k in STATS} | {"detections"}
        assert d.student.transform.min_size == (64,)


def test_bad_annotations_are_skipped_not_fatal(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    from PIL import Image

    images = []
    for i in range(1, 5):
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(root / "train2017" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 40, "height": 30})
    poly = [[2, 2, 20, 2, 20, 20, 2, 20]]
    anns = [
        {
            "id": 1,
            "image_id": 2,
            "category_id": 7,
            "bbox": [2, 2, 18, 18],
            "iscrowd": 1,
            "segmentation": poly,
            "area": 324,
        },  # crowd only
        {
            "id": 2,
            "image_id": 3,
            "category_id": 7,
            "bbox": [5, 5, 0.5, 10],
            "iscrowd": 0,
            "segmentation": poly,
            "area": 5,
        },  # degenerate (w <= 1)
        {
            "id": 3,
            "image_id": 4,
            "category_id": 9,
            "bbox": [39.5, 3, 8, 8],
            "iscrowd": 0,
            "segmentation": poly,
            "area": 64,
        },  # w <= 1 once clipped to the image
        {
            "id": 4,
            "image_id": 4,
            "category_id": 9,
            "bbox": [2, 2, 18, 18],
            "iscrowd": 0,
            "segmentation": poly,
            "area": 324,
        },
    ]
    cats = [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}]
    data = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    train = CocoDetection(root, "train2017", train=True, masks=True)
    assert train.ids == [4] and train.num_classes == 3
    image, target = train[0]
    assert image.shape == (3, 30, 40) and target["labels"].tolist() == [2]
    assert target["boxes"].tolist() == [[2.0, 2.0, 20.0, 20.0]]
    assert target["masks"].shape == (1, 30, 40)
    val = CocoDetection(root, "train2017", train=False)
    assert val.ids == [1, 2, 3, 4] and val[0][1]["boxes"].shape == (0, 4)
    assert CocoDetection(root, "train2017", labels="category_id").num_classes == 10


# The reference's detection/configs/CKD/ReviewCKD-*.yaml: ReviewKD's weight per (arch, student),
# and the one recipe with 4 images per batch (ReviewCKD-R18-R101.yaml; 8 elsewhere)
REVIEWKD_W = {
    ("faster_rcnn", "resnet18"): 1.2,
    ("mask_rcnn", "resnet18"): 0.8,
    ("faster_rcnn", "resnet50"): 1.0,
    ("mask_rcnn", "resnet50"): 1.0,
    ("faster_rcnn", "mobilenet_v2"): 2.0,
    ("mask_rcnn", "mobilenet_v2"): 1.0,
}


def test_coco_configs_of_the_three_pairs_load_and_build(tmp_path):
    names = shipped_configs("detection")
    assert not any(n.startswith("detection/") for n in shipped_configs())
    pairs = {}
    over = [f"teacher.checkpoint={__file__}"]  # any file: validation only, built without it
    for name in [n for n in names if n.startswith("detection/coco/") and "_ckd_" in n]:
        cfg = load_config(name, over)
        paper = name.endswith("_paper")
        key = (cfg.detector.arch, cfg.student.backbone)
        batch = 4 if paper and key == ("faster_rcnn", "resnet18") else 8
        assert (cfg.data.batch_size, cfg.optim.lr, cfg.method.name) == (batch, 0.01, "ckd")
        assert cfg.method.options.w_ckd == 0.1 and cfg.method.also[0].name == "reviewkd"
        assert cfg.method.also[0].options.w_reviewkd == REVIEWKD_W[key]
        assert (cfg.optim.iters, cfg.optim.milestones) == (
            (360_000, [240_000, 320_000]) if paper else (90_000, [60_000, 80_000])
        )
        pairs[(cfg.detector.arch, cfg.teacher.backbone, cfg.student.backbone)] = cfg
    assert {(t, s) for _, t, s in pairs} == {
        ("resnet101", "resnet18"),
        ("resnet101", "resnet50"),
        ("resnet50", "mobilenet_v2"),
    }
    assert {a for a, _, _ in pairs} == {"faster_rcnn", "mask_rcnn"}
    built: dict = {}
    for (arch, _, _), cfg in pairs.items():
        for m in (cfg.teacher, cfg.student):
            key = (arch, m.backbone)
            if key not in built:
                m = dataclasses.replace(m, checkpoint=None)  # random weights, no download
                net = build_detector(m, cfg.detector, cfg.input, 81)
                built[key] = (
                    net.backbone.out_channels,
                    hasattr(net.roi_heads, "mask_head") and net.roi_heads.mask_head is not None,
                )
                del net
            assert built[key] == (256, arch == "mask_rcnn")
    for name in names:  # the shapes demo and the teachers load too
        has_teacher = "teacher" in read_yaml(CONFIG_DIR / f"{name}.yaml")
        assert load_config(name, over if has_teacher else []).task == "detection"


def test_bad_values_are_one_line_config_errors(shapes, tmp_path):
    base = tiny_config(shapes, tmp_path, {"name": "vanilla"})
    for section, key, value, words in (
        ("student", "backbone", "resnet34", "known: resnet18, resnet50"),
        ("detector", "arch", "retinanet", "'faster_rcnn', 'mask_rcnn'"),
        ("optim", "warmup_iters", 9, "warmup_iters must be in [0, iters=4)"),
        ("input", "min_size", [], "input.min_size"),
    ):
        bad = {**base, section: {**base[section], key: value}}
        with pytest.raises(ConfigError, match=r"^[^\n]+$") as e:
            config_from_dict(bad)
        assert words in str(e.value)
    with pytest.raises(ConfigError, match="needs a teacher"):
        config_from_dict(tiny_config(shapes, tmp_path, {"name": "ckd"}))


def test_a_detection_config_without_its_task_key_says_to_add_it(shapes, tmp_path):
    old = {k: v for k, v in tiny_config(shapes, tmp_path, {"name": "vanilla"}).items()}
    old.pop("task")  # as detection configs were written before one engine served both tasks
    with pytest.raises(ConfigError, match=r"^[^\n]+$") as e:
        config_from_dict(old)
    assert "add `task: detection`" in str(e.value)
    assert config_from_dict({**old, "task": "detection"}).task == "detection"


def test_a_subset_larger_than_the_data_is_one_line(shapes, tmp_path):
    from ckd.tasks.detection.task import build_datasets

    base = tiny_config(shapes, tmp_path, {"name": "vanilla"})
    for key, n in (("train_subset", 13), ("val_subset", 7)):  # 12 train / 6 val images
        cfg = config_from_dict({**base, "data": {**base["data"], key: n}})
        with pytest.raises(ConfigError, match=rf"^data\.{key}={n} but .* holds \d+ ") as e:
            build_datasets(cfg)
        assert "give at most that, or null for all" in str(e.value)
    cfg = config_from_dict({**base, "data": {**base["data"], "train_subset": 5}})
    assert len(build_datasets(cfg)[0]) == 5
