"""medshared.weights: downloads through torch.hub's cache, tested against a file server on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import socket

import pytest
import torch
from medshared import weights as W
from medshared.testing import serve_files


@pytest.fixture
def hub_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEDREPRO_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    return tmp_path / "torch_home"


def _publish(folder, state, stem="tiny"):
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "x.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"{stem}-{digest[:8]}.pth"
    tmp.rename(folder / name)
    return name, digest


def test_download_hash_checked_and_cached(tmp_path, hub_home):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    name, _ = _publish(tmp_path / "srv", state)
    with serve_files(tmp_path / "srv") as url:
        sd = W.load_url_state_dict(f"{url}/{name}")
        assert torch.equal(sd["w"], state["w"])
        assert url.requests == [f"/{name}"]
        path = W.fetch_url(f"{url}/{name}")  # second call: from the cache, no request
        assert url.requests == [f"/{name}"]
    assert path == hub_home / "hub" / "checkpoints" / name and path.is_file()
    # served from the cache even when offline
    assert W.fetch_url(f"http://127.0.0.1:9/{name}", offline=True) == path


def test_corrupt_download_rejected_and_nothing_cached(tmp_path, hub_home):
    name, _ = _publish(tmp_path / "srv", {"w": torch.ones(3)})
    (tmp_path / "srv" / name).write_bytes(b"tampered bytes")  # same name, wrong content
    with serve_files(tmp_path / "srv") as url:
        with pytest.raises(ValueError, match="does not match its sha256"):
            W.fetch_url(f"{url}/{name}")
    ckpt = hub_home / "hub" / "checkpoints"
    assert not ckpt.exists() or list(ckpt.iterdir()) == []  # no partial or corrupt file left


def test_offline_and_unreachable_errors_name_file_url_and_flag(tmp_path, hub_home, monkeypatch):
    url = "http://127.0.0.1:9/resnet-0123abcd.pth"
    hint = "pass --pretrained none to train from random init"
    with pytest.raises(W.WeightsUnavailable, match="offline") as e:
        W.fetch_url(url, offline=True, what="ImageNet ResNet weights", hint=hint)
    msg = str(e.value)
    assert "resnet-0123abcd.pth" in msg and url in msg and "--pretrained none" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.is_offline()
    with pytest.raises(W.WeightsUnavailable, match="offline"):
        W.fetch_url(url, hint=hint)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # port 9 (discard) on loopback: connection refused -> the same clear error, not a traceback from urllib
    with pytest.raises(W.WeightsUnavailable, match="download failed") as e:
        W.fetch_url(url, hint=hint)
    assert url in str(e.value) and hint in str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # the CLIs' expected-error path
    with pytest.raises(ValueError, match="no -<sha256 prefix>"):
        W.fetch_url("http://127.0.0.1:9/weights.pth")


def test_hf_download_offline_error(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(W.WeightsUnavailable) as e:
        W.hf_download("facebook/deit-base", "model.safetensors", offline=True, hint="use --pretrained none")
    msg = str(e.value)
    assert (
        "https://huggingface.co/facebook/deit-base/resolve/main/model.safetensors" in msg and "--pretrained none" in msg
    )


def test_root_conftest_blocks_non_loopback():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(ConnectionRefusedError, match="only connect to 127.0.0.1"):
            s.connect(("93.184.216.34", 80))
    finally:
        s.close()


def test_serve_files_extra_headers(tmp_path):
    import urllib.request

    from medshared.testing import hub_headers

    (tmp_path / "f.bin").write_bytes(b"abc")
    with serve_files(tmp_path, headers=hub_headers) as url:
        with urllib.request.urlopen(f"{url}/f.bin") as r:
            assert r.read() == b"abc"
            assert r.headers["X-Repo-Commit"] == "a" * 40
            assert r.headers["ETag"] == '"' + hashlib.sha256(b"abc").hexdigest() + '"'
    with serve_files(tmp_path, headers={"X-Test": "1"}) as url:
        with urllib.request.urlopen(f"{url}/f.bin") as r:
            assert r.headers["X-Test"] == "1"
        assert url.requests == ["/f.bin"]
