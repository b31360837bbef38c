"""Pretrained weights through the libraries' own download paths, tested against servers on 127.0.0.1 only:
xrv's download (its model URL pointed at medshared.testing.serve_files) and transformers' from_pretrained through
huggingface_hub (HF_ENDPOINT pointed at a loopback server that answers like the Hub); offline, one clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from medshared.testing import hub_headers, serve_files
from medshared.weights import WeightsUnavailable
from pocapnet.weights import XRV_ALL_FILE, XRV_ALL_URL, load_densenet, load_wav2vec2, state_digest


@pytest.fixture()
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for v in ("POCAPNET_WEIGHTS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEDREPRO_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    return tmp_path


def test_xrv_densenet_download_cache_offline_and_corrupt(clean_env, monkeypatch):
    import torchxrayvision as xrv

    srv = clean_env / "srv"
    srv.mkdir()
    torch.manual_seed(3)
    ref = xrv.models.DenseNet(weights=None)
    torch.save(ref, srv / XRV_ALL_FILE)  # xrv releases a whole pickled model
    cache = clean_env / "xrv_cache"
    with serve_files(srv) as url:
        monkeypatch.setitem(xrv.models.model_urls["densenet121-res224-all"], "weights_url", f"{url}/{XRV_ALL_FILE}")
        m = load_densenet("densenet121-res224-all", cache_dir=cache)  # xrv's own download into its cache
        assert (cache / XRV_ALL_FILE).is_file() and url.requests == [f"/{XRV_ALL_FILE}"]
        torch.testing.assert_close(m.state_dict()["features.conv0.weight"], ref.state_dict()["features.conv0.weight"])
        load_densenet("densenet121-res224-all", cache_dir=cache)
        assert len(url.requests) == 1  # the second call used the cache
        assert not list(cache.glob("*.part"))
        # a corrupt download is rejected and removed from the cache
        (srv / XRV_ALL_FILE).write_bytes(b"not a pickle")
        bad_cache = clean_env / "bad_cache"
        with pytest.raises(ValueError, match="unreadable X-ray weights.*removed from the cache"):
            load_densenet("densenet121-res224-all", cache_dir=bad_cache)
        assert not (bad_cache / XRV_ALL_FILE).exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match=rf"{XRV_ALL_FILE}.*offline mode is on.*--xray-weights random"):
        load_densenet("densenet121-res224-all", cache_dir=clean_env / "empty")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsUnavailable, match="offline mode is on"):
        load_densenet("densenet121-res224-all", cache_dir=clean_env / "empty", offline=True)
    assert XRV_ALL_URL.endswith(XRV_ALL_FILE)


def test_wav2vec2_from_pretrained_through_hf_endpoint(clean_env):
    repo = clean_env / "hub" / "org" / "tiny-w2v" / "resolve" / "main"
    repo.mkdir(parents=True)
    load_wav2vec2("tiny-random").save_pretrained(repo)
    want = state_digest(load_wav2vec2("tiny-random"))
    code = """
import sys
from medshared.weights import WeightsUnavailable
from pocapnet.weights import load_wav2vec2, state_digest
print(state_digest(load_wav2vec2("org/tiny-w2v")))                   # downloads through HF_ENDPOINT
print("N", flush=True)
sys.stdin.readline()                                                  # the test counts the server's requests
print(state_digest(load_wav2vec2("org/tiny-w2v", offline=True)))     # now from huggingface_hub's cache
try:
    load_wav2vec2("org/not-cached", offline=True)
except WeightsUnavailable as e:
    print("ERR", e)
"""
    with serve_files(clean_env / "hub", headers=hub_headers) as url:  # answers like the Hub
        env = {**os.environ, "HF_ENDPOINT": str(url), "HF_HOME": str(clean_env / "hf")}
        # a fresh process: huggingface_hub reads HF_ENDPOINT when it is imported
        p = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = p.stdout.readline().split()
        assert p.stdout.readline().strip() == "N", p.stderr.read()[-2000:]
        n = len(url.requests)
        out, err = p.communicate("\n", timeout=120)
        assert p.returncode == 0, err[-2000:]
        lines = out.splitlines()
    assert first == [want] and lines[0] == want  # the served weights, then the same from the cache
    assert "/org/tiny-w2v/resolve/main/model.safetensors" in url.requests[:n]
    assert len(url.requests) == n  # the second load made no request
    assert lines[1].startswith("ERR") and "offline mode is on" in lines[1] and "--wav2vec2 tiny-random" in lines[1]
