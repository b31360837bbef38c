"""ImageNet DeiT weights of LungCVT (paper IV-C): where they are looked for, where they are downloaded from
(``resolve_weights``; re-exported by :mod:`lungcvt.model`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["WEIGHTS_ENV", "WEIGHTS_URL_ENV", "resolve_weights", "weights_url"]

WEIGHTS_ENV = "LUNGCVT_WEIGHTS_DIR"
WEIGHTS_URL_ENV = "LUNGCVT_WEIGHTS_URL"


_WEIGHT_URLS = {
    "deit_tiny_patch16_224": "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth",
    "deit_small_patch16_224": "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
    "deit_base_patch16_224": "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth",
}


def _candidates(backbone: str) -> list[str]:
    names = []
    if backbone in _WEIGHT_URLS:
        names.append(_WEIGHT_URLS[backbone].rsplit("/", 1)[1])
    names += [
        f"{backbone}.fb_in1k.safetensors",
        f"{backbone}.safetensors",
        f"{backbone}.pth",
        f"{backbone}.fb_in1k/model.safetensors",
    ]
    return names


def weights_url(backbone: str) -> str | None:
    """Download URL of ``backbone``'s ImageNet weights: the DeiT release file (sha256 prefix in its name), under
    ``$LUNGCVT_WEIGHTS_URL`` when set (a mirror of ``https://dl.fbaipublicfiles.com/deit``), else FB's server."""
    if backbone not in _WEIGHT_URLS:
        return None
    base = os.environ.get(WEIGHTS_URL_ENV, "").strip()
    if not base:
        return _WEIGHT_URLS[backbone]
    return f"{base.rstrip('/')}/{_WEIGHT_URLS[backbone].rsplit('/', 1)[1]}"


def _hint() -> str:
    return (
        f"pass --pretrained PATH to a downloaded file (or put it in ${WEIGHTS_ENV}), or pass --pretrained none for "
        "random initialisation"
    )


def resolve_weights(
    backbone: str, weights: str | Path | None = None, offline: bool = False, download: bool = True
) -> Path:
    """Find, or download, the ImageNet DeiT weights for ``backbone``.

    Order: the explicit ``weights`` path (or an http(s) URL whose file name carries its sha256 prefix, as torch.hub
    names them: downloaded into torch.hub's cache and checked); ``$LUNGCVT_WEIGHTS_DIR/<name>``; the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``); the Hugging Face cache (``models--timm--<backbone>.fb_in1k``). Then, unless
    offline (``offline``, ``HF_HUB_OFFLINE=1``, ``MEDREPRO_OFFLINE=1``) or ``download`` is False: the DeiT release
    file through torch.hub's downloader into its cache, sha256-checked (``medshared.weights.fetch_url``; the file the
    official code loaded through ``torch.hub`` and timm's ``fb_in1k`` config points to), and if that server cannot be
    reached, ``timm/<backbone>.fb_in1k`` through huggingface_hub's cache.

    Raises:
        FileNotFoundError: (``medshared.weights.WeightsUnavailable`` when a download was the last resort) naming the
            file, the URL, ``--pretrained PATH`` and ``--pretrained none``.
        ValueError: a download that does not match its sha256 (nothing is left in the cache).
    """
    from medshared.weights import WeightsUnavailable, fetch_url, hf_download, is_offline

    if isinstance(weights, str) and weights.startswith(("http://", "https://")):  # a mirror or your own release
        return fetch_url(weights, offline=is_offline(offline), what=f"DeiT weights {weights}", hint=_hint())
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"DeiT weights file not found: {p}. Download {_WEIGHT_URLS.get(backbone, backbone)} (or "
                f"timm/{backbone}.fb_in1k model.safetensors from huggingface.co), or pass --pretrained none "
                "for random initialisation"
            )
        return p
    names = _candidates(backbone)
    dirs: list[Path] = []
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    import torch

    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    snap = hf_home / "hub" / f"models--timm--{backbone}.fb_in1k" / "snapshots"
    if snap.is_dir():
        for p in sorted(snap.glob("*/model.safetensors")):
            return p
    url = weights_url(backbone)
    what = f"DeiT ImageNet weights for {backbone} ({names[0]})"
    looked = f"looked for {names[0]} in {', '.join(map(str, dirs))} and the Hugging Face cache"
    if not download or url is None:
        from medshared.weights import missing_weights_message

        raise FileNotFoundError(missing_weights_message(what, None, url or _WEIGHT_URLS.get(backbone), _hint(), looked))
    off = is_offline(offline)
    try:
        return fetch_url(url, offline=off, what=what, hint=_hint())
    except WeightsUnavailable as first:
        if off:
            raise WeightsUnavailable(f"{first} ({looked}; offline: --offline or HF_HUB_OFFLINE=1)") from None
        try:
            return hf_download(f"timm/{backbone}.fb_in1k", "model.safetensors", offline=off, what=what, hint=_hint())
        except WeightsUnavailable as second:
            raise WeightsUnavailable(f"{first}. Hugging Face Hub: {second}") from None
