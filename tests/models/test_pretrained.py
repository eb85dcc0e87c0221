"""Published weights for tv: and timm: models from the local caches (fake cache files here: a
randomly initialised model's weights saved where torch hub / Hugging Face keep them), a new head
for another class count, the one line naming the files looked for, no network, `ckd
fetch-weights`, fine-tuning through `ckd train`, and .safetensors teacher checkpoints."""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from ckd.cli import main
from ckd.data import DatasetInfo, make_fake_image_folder
from ckd.engine.checkpoint import load_checkpoint
from ckd.errors import CheckpointError, ConfigError
from ckd.models import create_model
from ckd.models.pretrained import WeightsLocation, create_pretrained, hf_hub_cache
from ckd.tasks.classification import ModelConfig, build_model


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch) -> dict[str, Path]:
    """Empty torch hub and Hugging Face caches in tmp_path, and no network at all."""
    torch_home, hf_home = tmp_path / "torch_home", tmp_path / "hf_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return {"torch": torch_home / "hub" / "checkpoints", "hf": hf_home / "hub"}


def tv_cache_file(caches, arch: str) -> Path:
    url = tvm.get_model_weights(arch).DEFAULT.url
    return caches["torch"] / url.rsplit("/", 1)[-1]


def fake_torchvision_weights(caches, arch: str) -> dict[str, torch.Tensor]:
    """Save a randomly initialised 1000-class ``arch`` where torch hub keeps its weights."""
    torch.manual_seed(1)
    state = tvm.get_model(arch, weights=None).state_dict()
    path = tv_cache_file(caches, arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_torchvision_weights_come_from_torch_hubs_cache_with_a_new_head(caches):
    state = fake_torchvision_weights(caches, "mobilenet_v3_small")
    model = create_pretrained("tv:mobilenet_v3_small", num_classes=7)
    own = model.state_dict()
    head = "classifier.3"
    for key, value in state.items():
        if not key.startswith(head):
            assert torch.equal(own[key], value), key
    assert own[f"{head}.weight"].shape == (7, 1024)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    # with as many classes as the weights (ImageNet's 1000) the pretrained head stays
    same = create_pretrained("tv:mobilenet_v3_small", num_classes=1000).state_dict()
    assert torch.equal(same[f"{head}.weight"], state[f"{head}.weight"])


def test_a_convolutional_head_and_greyscale_input(caches):
    state = fake_torchvision_weights(caches, "squeezenet1_1")
    model = create_pretrained("tv:squeezenet1_1", num_classes=3, in_channels=1)
    assert model.classifier[1].out_channels == 3
    first = model.features[0].weight
    assert first.shape[1] == 1
    # the grey kernel sums the RGB ones: a grey image gives what its RGB copy gave before
    assert torch.allclose(first[:, 0], state["features.0.weight"].sum(dim=1), atol=1e-6)
    assert torch.equal(model.features[3].squeeze.weight, state["features.3.squeeze.weight"])


def test_missing_torchvision_weights_name_the_file_and_download_nothing(caches):
    expected = tv_cache_file(caches, "resnet18")
    assert expected.name == "resnet18-f37072fd.pth"
    with pytest.raises(ConfigError) as err:
        create_pretrained("tv:resnet18", 10)
    message = str(err.value)
    assert f"looked for {expected};" in message and "ckd fetch-weights tv:resnet18" in message
    assert "\n" not in message
    assert not expected.exists()


def fake_timm_weights(caches, arch: str, repo: str, revision: str = "abc123") -> dict:
    """Save a randomly initialised timm ``arch`` as Hugging Face's cache holds a download."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    state = timm.create_model(arch, pretrained=False).state_dict()
    folder = caches["hf"] / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        folder / "snapshots" / revision / "model.safetensors",
    )
    return state


def test_timm_weights_come_from_the_hugging_face_cache(caches):
    pytest.importorskip("timm")
    state = fake_timm_weights(caches, "deit_tiny_patch16_224", "timm/deit_tiny_patch16_224.fb_in1k")
    model = create_pretrained("timm:deit_tiny_patch16_224", 10, in_channels=1, image_size=32)
    own = model.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "cls_token", "norm.weight"):
        assert torch.equal(own[key], state[key]), key
    assert own["head.weight"].shape == (10, 192)  # timm's new head (num_classes=10)
    assert own["pos_embed"].shape == (1, 1 + 4, 192)  # resampled to a 2x2 grid of patches
    assert own["patch_embed.proj.weight"].shape[1] == 1
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    # with a tag, the same repository; the cache's path is said when it is empty
    where = WeightsLocation("timm:deit_tiny_patch16_224.fb_in1k")
    assert where.found() == hf_hub_cache() / (
        "models--timm--deit_tiny_patch16_224.fb_in1k/snapshots/abc123/model.safetensors"
    )


def test_missing_timm_weights_name_the_caches_looked_at(caches):
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as err:
        create_pretrained("timm:resnet18", 10)
    message = str(err.value)
    hf = caches["hf"] / "models--timm--resnet18.a1_in1k" / "snapshots" / "*" / "model.safetensors"
    assert str(hf) in message
    assert str(caches["torch"] / "resnet18_a1_0-d63eafa0.pth") in message  # timm's URL cache
    # timm's own URL cache (torch hub's folder) is read as well
    import timm

    caches["torch"].mkdir(parents=True)
    torch.save(
        timm.create_model("resnet18").state_dict(), caches["torch"] / "resnet18_a1_0-d63eafa0.pth"
    )
    assert create_pretrained("timm:resnet18", 4).fc.out_features == 4


def test_pretrained_is_for_tv_and_timm_models():
    with pytest.raises(ConfigError, match=r"for torchvision and timm models"):
        create_pretrained("resnet8", 10)


def test_a_missing_weights_file_stops_ckd_train_before_anything_is_written(tmp_path, capsys):
    root = make_fake_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    out = tmp_path / "run"
    argv = ["train", "folder/teacher_resnet18", f"data.root={root}", f"run.out_dir={out}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "resnet18-f37072fd.pth" in err
    assert not out.exists()


def test_fetch_weights_downloads_into_the_cache(caches, monkeypatch, capsys):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(tvm.get_model("squeezenet1_1").state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert main(["fetch-weights", "tv:squeezenet1_1"]) == 0
    path = tv_cache_file(caches, "squeezenet1_1")
    assert f"tv:squeezenet1_1: {path}" in capsys.readouterr().out
    assert calls == [(tvm.SqueezeNet1_1_Weights.DEFAULT.url, "b8a52dc0")]  # from the file name
    assert main(["fetch-weights", "tv:squeezenet1_1"]) == 0  # there already: nothing to do
    assert len(calls) == 1

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["fetch-weights", "tv:resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckd: error: tv:resnet18: could not download the weights: ")
    assert err.count("\n") == 0
    assert main(["fetch-weights", "tv:no_such_model"]) == 2
    assert "unknown torchvision model 'no_such_model'" in capsys.readouterr().err


def test_fine_tuning_a_pretrained_teacher_through_ckd_train(tmp_path, caches, capsys):
    """The documented command: the folder's teacher config, a pretrained tv: backbone and a
    new head for the folder's 3 classes; a tiny learning rate keeps the backbone at the cached
    weights, so the run is seen to have started from them."""
    state = fake_torchvision_weights(caches, "resnet18")
    root = make_fake_image_folder(tmp_path / "data", per_class=4, val_per_class=1)
    out = tmp_path / "teacher"
    argv = [
        "train", "folder/teacher_resnet18", f"data.root={root}", f"run.out_dir={out}",
        "optim.epochs=1", "optim.lr=1.0e-9", "data.num_workers=0", "data.batch_size=6",
        "run.tensorboard=false", "run.device=cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    tuned = load_checkpoint(out / "last.pt")["model"]
    assert tuned["fc.weight"].shape == (3, 512)
    assert torch.allclose(tuned["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"], atol=1e-6)
    # the fine-tuned file is a teacher as it is (no cache needed any more)
    teacher = build_model(ModelConfig("tv:resnet18", str(out / "last.pt")), info3())
    assert torch.equal(teacher.fc.weight, tuned["fc.weight"])


def info3() -> DatasetInfo:
    return DatasetInfo("folder", 3, 3, 32, (0.5,) * 3, (0.25,) * 3)


def test_a_safetensors_file_is_a_teacher_checkpoint(tmp_path):
    from safetensors.torch import save_file

    teacher = create_model("resnet8", 3, 3)
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, path)
    loaded = build_model(ModelConfig("resnet8", str(path)), info3())
    for key, value in teacher.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # another model, and a file that is not safetensors: one line each
    with pytest.raises(ConfigError, match=r"does not fit resnet20: .*missing keys"):
        build_model(ModelConfig("resnet20", str(path)), info3())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"bad.safetensors: not a readable safetensors file"):
        build_model(ModelConfig("resnet8", str(bad)), info3())
