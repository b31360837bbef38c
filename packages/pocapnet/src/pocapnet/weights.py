"""Pretrained feature extractors (paper §2.2): wav2vec2 XLSR-53 and the TorchXRayVision DenseNet121 "all" weights.

Where weights are looked for, in order: an explicit local path, ``$POCAPNET_WEIGHTS_DIR``, the library's own cache
(the Hugging Face cache for wav2vec2, ``~/.torchxrayvision/models_data/`` for xrv); then, unless offline
(``--offline``, ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, ``MEDREPRO_OFFLINE=1``), the library's own
download: transformers' ``from_pretrained`` (huggingface_hub's cache) and xrv's ``get_weights``. Random extractors
(``tiny-random``, ``random-xlsr53``, ``random``) are seeded, so extraction and prediction see the same weights.
:func:`weights_identity` records what was loaded (source, resolved path, a SHA-256 of the state dict) so that a
checkpoint can refuse features made with other weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "XRV_ALL_FILE",
    "XRV_ALL_URL",
    "tiny_wav2vec2_config",
    "load_wav2vec2",
    "load_densenet",
    "state_digest",
    "weights_identity",
]

XRV_ALL_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
XRV_ALL_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/" + XRV_ALL_FILE
_ENV = "POCAPNET_WEIGHTS_DIR"


@contextlib.contextmanager
def _seeded(seed: int):
    """Deterministic random init (so random-weight extractors give the same features in extract and predict)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _w2v_config(**dims: Any) -> Any:
    """wav2vec2 in the XLSR-53 layout (layer-norm conv stack with bias, stable layer norm), inference only (no
    masking, dropout or layer drop); ``dims`` set the sizes."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
        apply_spec_augment=False,
        mask_time_prob=0.0,
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        **dims,
    )


def tiny_wav2vec2_config() -> Any:
    """A 22,872-parameter wav2vec2 config (brief) with the default conv stack, so 7 s -> 349 frames."""
    return _w2v_config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )


def _xlsr53_config(num_hidden_layers: int = 24) -> Any:
    """The XLSR-53 architecture (brief: hidden 1024, 24 layers, 16 heads, feed-forward 4096, positional conv
    128/16); ``num_hidden_layers`` lets the precision probe build a one-layer stand-in of the same op mix."""
    return _w2v_config(
        hidden_size=1024,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_dim=(512,) * 7,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
    )


def load_wav2vec2(source: str, offline: bool = False) -> nn.Module:
    """Load a frozen wav2vec2 encoder.

    Args:
        source: ``"tiny-random"`` (tests/demo), ``"random-xlsr53"`` (XLSR-53-size, random weights, for benchmarks),
            a local folder with ``config.json`` + weights, or a Hugging Face Hub name (default
            ``facebook/wav2vec2-large-xlsr-53``), looked up in ``$POCAPNET_WEIGHTS_DIR/<name>``, then the Hugging
            Face cache, then downloaded by transformers' ``from_pretrained`` into that cache unless offline.
        offline: the ``--offline`` flag (``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` also count).

    Raises:
        medshared.weights.WeightsUnavailable: not available locally, and offline or the download failed (the message
            names where it was looked for, the URL and the random-init flag).
    """
    from medshared.weights import WeightsUnavailable, is_offline, missing_weights_message
    from transformers import Wav2Vec2Model

    if source in ("tiny-random", "random-xlsr53"):
        with _seeded(0):
            model = Wav2Vec2Model(tiny_wav2vec2_config() if source == "tiny-random" else _xlsr53_config())
        return _mark(model, source)
    candidates = [Path(source)]
    if os.environ.get(_ENV):
        candidates.append(Path(os.environ[_ENV]) / source.split("/")[-1])
    for c in candidates:
        if c.is_dir() and (c / "config.json").is_file():
            return _mark(Wav2Vec2Model.from_pretrained(str(c), local_files_only=True), c.resolve())
    off = is_offline(offline)
    try:  # the Hugging Face cache; online, transformers downloads into it (huggingface_hub, HF_ENDPOINT honoured)
        model = Wav2Vec2Model.from_pretrained(source, local_files_only=off)
        return _mark(model, f"hf://{source}")
    except Exception as e:  # OSError / EnvironmentError / HTTP errors from transformers and huggingface_hub
        reason = "offline mode is on and it is not in the Hugging Face cache" if off else f"download failed: {e}"
        looked = ", ".join(map(str, candidates)) + ", the Hugging Face cache"
        raise WeightsUnavailable(
            missing_weights_message(
                f"wav2vec2 weights {source!r}",
                looked,
                f"https://huggingface.co/{source}",
                "or pass "
                "`--wav2vec2 tiny-random` for a random tiny model (or save_pretrained the model into "
                f"${_ENV}/{source.split('/')[-1]})",
                reason,
            )
        ) from e


def _xrv_cache_dir() -> Path:
    return Path.home() / ".torchxrayvision" / "models_data"


def _resolve_xrv_file(weights: str, offline: bool = False, cache_dir: str | Path | None = None) -> Path:
    """A local DenseNet weights file: the given path, ``$POCAPNET_WEIGHTS_DIR``, xrv's cache; else xrv's download."""
    from medshared.weights import WeightsUnavailable, is_offline, missing_weights_message

    hint = "or pass `--xray-weights random` (or tiny-random) for random initialisation"
    p = Path(weights)
    if p.suffix in (".pt", ".pth", ".safetensors"):
        if p.is_file():
            return p
        raise WeightsUnavailable(missing_weights_message("X-ray weights file", p, XRV_ALL_URL, hint))
    import torchxrayvision as xrv

    if weights not in xrv.models.model_urls:
        raise ValueError(
            f"unknown X-ray weights {weights!r}: a file path, random, tiny-random or an xrv name such "
            f"as densenet121-res224-all"
        )
    url = xrv.models.model_urls[weights]["weights_url"]
    name = Path(url).name
    cache = Path(cache_dir) if cache_dir is not None else _xrv_cache_dir()
    cands = ([Path(os.environ[_ENV]) / name] if os.environ.get(_ENV) else []) + [cache / name]
    for c in cands:
        if c.is_file():
            return c
    if is_offline(offline):
        raise WeightsUnavailable(
            missing_weights_message(
                f"TorchXRayVision weights {weights!r}",
                " or ".join(map(str, cands)),
                url,
                hint,
                reason="offline mode is on",
            )
        )
    try:  # xrv's own download (to <file>.part, renamed when complete) into its cache
        return Path(xrv.models.get_weights(weights, cache_dir=str(cache)))
    except Exception as e:  # requests' connection / HTTP errors
        raise WeightsUnavailable(
            missing_weights_message(
                f"TorchXRayVision weights {weights!r}", cache / name, url, hint, reason=f"download failed: {e}"
            )
        ) from e


def load_densenet(weights: str, offline: bool = False, cache_dir: str | Path | None = None) -> nn.Module:
    """TorchXRayVision DenseNet121 in eval mode.

    Args:
        weights: ``"densenet121-res224-all"`` (the paper's; from ``$POCAPNET_WEIGHTS_DIR``, xrv's cache, or xrv's
            download when online), a file path (.pt whole pickled model as xrv releases it, or a state dict,
            or .safetensors), ``"random"`` (DenseNet121, random), or ``"tiny-random"`` (a small random DenseNet with
            32-d features, tests/demo).
        offline: the ``--offline`` flag (``HF_HUB_OFFLINE=1`` / ``MEDREPRO_OFFLINE=1`` also count).
        cache_dir: xrv's cache (default ``~/.torchxrayvision/models_data``).

    Raises:
        medshared.weights.WeightsUnavailable: the file is missing, and offline or the download failed.
        ValueError: the file is not a DenseNet121 checkpoint (a corrupt download is removed from the cache).
    """
    import torchxrayvision as xrv

    if weights in ("random", "tiny-random"):
        with _seeded(0):
            if weights == "random":
                model = xrv.models.DenseNet(weights=None)
            else:
                model = xrv.models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)
        return _mark(model, weights)
    path = _resolve_xrv_file(weights, offline, cache_dir)
    model = xrv.models.DenseNet(weights=None)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # xrv's release file is a whole pickled model (needs weights_only=False; only load files you trust).
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
            state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    except Exception as e:
        in_cache = path.parent in {_xrv_cache_dir(), Path(cache_dir) if cache_dir else None}
        if in_cache:  # a corrupt download must not stay in the cache
            path.unlink(missing_ok=True)
        raise ValueError(
            f"{path}: unreadable X-ray weights ({type(e).__name__}: {e})"
            + ("; removed from the cache, the next run downloads it again" if in_cache else "")
        ) from e
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "op_threshs"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if k != "op_threshs"]
    if bad or unexpected:
        raise ValueError(f"{path}: not a DenseNet121 checkpoint (missing {bad[:3]}, unexpected {unexpected[:3]})")
    return _mark(model, path.resolve())


def _mark(model: nn.Module, path: Path | str) -> nn.Module:
    """Frozen eval-mode model that remembers where its weights came from (for :func:`weights_identity`)."""
    model = model.eval().requires_grad_(False)
    model._pocapnet_weights_path = str(path)
    return model


def state_digest(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's state dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy())  # raw bytes, no copy
    return h.hexdigest()[:16]


def weights_identity(model: nn.Module, source: str) -> dict[str, Any]:
    """``{"source", "path", "sha256"}`` of a loaded extractor (``path`` is where its weights came from, if a file)."""
    return {"source": source, "path": getattr(model, "_pocapnet_weights_path", None), "sha256": state_digest(model)}
