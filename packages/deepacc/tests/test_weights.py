"""``--pretrained imagenet``: torchvision's ResNet weights fetched into torch.hub's cache with the hash checked, from a
server on 127.0.0.1 (tests never reach the internet); offline, a clear error names the file, the URL and the flag."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
import torchvision
from deepacc import backbone
from deepacc.config import create_config
from deepacc.model import build_model
from medshared.testing import serve_files


def _r18_cfg():
    cfg = create_config("deepacc_r101")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="resnet18", min_size=64, max_size=64))


@pytest.fixture(scope="module")
def www(tmp_path_factory) -> dict:  # noqa: ANN001
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    src = tmp_path_factory.mktemp("www")
    raw = src / "raw.pth"
    torch.save(ref.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    good = f"resnet18-{digest[:8]}.pth"  # torchvision's naming: <name>-<sha256 prefix>.pth
    raw.rename(src / good)
    bad = "resnet18-00000000.pth"  # served bytes do not match the prefix in the name
    (src / bad).symlink_to(src / good)
    return {"dir": src, "good": good, "bad": bad, "ref": ref}


@pytest.fixture()
def served(www: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEDREPRO_OFFLINE", "DEEPACC_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    with serve_files(www["dir"]) as url:
        monkeypatch.setenv("DEEPACC_WEIGHTS_URL", str(url))
        yield {**www, "url": url, "cache": tmp_path / "torch_home" / "hub" / "checkpoints"}


def test_download_into_hub_cache_then_cached(served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backbone.BACKBONE_WEIGHT_FILES, "resnet18", served["good"])
    model = build_model(_r18_cfg(), pretrained="imagenet")
    assert torch.equal(model.backbone.body.conv1.weight, served["ref"].conv1.weight)
    assert (served["cache"] / served["good"]).is_file()
    assert served["url"].requests == [f"/{served['good']}"]
    build_model(_r18_cfg(), pretrained="imagenet")  # second time: from the cache, no request
    assert len(served["url"].requests) == 1


def test_corrupt_download_rejected_and_not_cached(served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backbone.BACKBONE_WEIGHT_FILES, "resnet18", served["bad"])
    with pytest.raises(ValueError, match="sha256"):
        build_model(_r18_cfg(), pretrained="imagenet")
    assert not served["cache"].exists() or not any(served["cache"].iterdir())


def test_offline_error_names_file_url_and_random_init_flag(served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backbone.BACKBONE_WEIGHT_FILES, "resnet18", served["good"])
    with pytest.raises(FileNotFoundError) as err:
        build_model(_r18_cfg(), pretrained="imagenet", offline=True)
    msg = str(err.value)
    assert served["good"] in msg and f"{served['url']}/{served['good']}" in msg and "--pretrained none" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment switch works too
    with pytest.raises(FileNotFoundError, match="offline"):
        build_model(_r18_cfg(), pretrained="imagenet")
    assert served["url"].requests == []
