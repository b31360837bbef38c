"""Pretrained weights through the libraries' own caches, and one clear error when they cannot be had.

Every package resolves weights in the same order: an explicit local path; the local places it already supported
(a package weights dir, the library's cache); then, unless offline, a download through the library's own mechanism:

- a URL with a sha256 prefix in its file name (torchvision / torch.hub convention) -> :func:`fetch_url`, which stores
  it in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``) and checks the hash;
- a Hugging Face Hub file (timm, transformers) -> :func:`hf_download` into huggingface_hub's cache.

Offline means the package's ``--offline`` flag, ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1`` or
``MEDREPRO_OFFLINE=1``; offline, or when the download fails, :class:`WeightsUnavailable` names the file, the URL and
the flag that trains from random init instead. A failed or corrupt download never leaves a file in the cache
(torch.hub writes to a ``.partial`` temp file and renames it only after the hash matched).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "WeightsUnavailable",
    "fetch_url",
    "hf_download",
    "hub_checkpoint_dir",
    "is_offline",
    "load_url_state_dict",
    "missing_weights_message",
]

_TRUE = {"1", "true", "yes", "on"}
_HASH_RE = re.compile(r"-([a-f0-9]{6,64})\.")  # torch.hub's convention: name-<sha256 prefix>.ext


class WeightsUnavailable(FileNotFoundError):
    """Pretrained weights are neither on disk nor downloadable now (offline or unreachable)."""


def is_offline(flag: bool = False) -> bool:
    """True when ``flag`` (a package's ``--offline``) or one of the offline environment variables is set."""
    if flag:
        return True
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEDREPRO_OFFLINE")
    )


def missing_weights_message(what: str, path: str | Path | None, url: str | None, hint: str, reason: str = "") -> str:
    """The one wording of the missing-weights error.

    Args:
        what: e.g. ``"ImageNet ResNet-101 weights"``.
        path: where the file was looked for / would be cached.
        url: where it downloads from (None when there is no public URL).
        hint: how to go on without it, e.g. ``"pass --pretrained none to train from random init"``.
        reason: why it is unavailable (offline, the network error).
    """
    parts = [f"{what} not found"]
    if path is not None:
        parts[0] += f" at {path}"
    if reason:
        parts.append(reason)
    if url:
        parts.append(f"download it from {url} (or run once with network access, without --offline)")
    if hint:
        parts.append(hint)
    return "; ".join(parts)


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_url(
    url: str,
    *,
    file_name: str | None = None,
    sha256: str | None = None,
    check_hash: bool = True,
    offline: bool = False,
    what: str = "pretrained weights",
    hint: str = "",
    progress: bool = False,
) -> Path:
    """The cached file for ``url``, downloading it into torch.hub's cache when absent and online.

    Args:
        url: http(s) URL of the weights.
        file_name: name in the cache (default: the URL's last path component).
        sha256: expected sha256 (or a prefix of it); default: the ``-<hex>.`` prefix in the file name.
        check_hash: verify the download (an unverifiable name with ``check_hash`` raises ``ValueError``).
        offline: the package's ``--offline`` flag (see :func:`is_offline`).
        what, hint: wording of the error (see :func:`missing_weights_message`).
        progress: show torch.hub's progress bar.

    Returns:
        Path of the cached file.

    Raises:
        WeightsUnavailable: not cached and offline, or the download failed (nothing is left in the cache).
        ValueError: the download does not match its hash (nothing is left in the cache), or no hash to check.
    """
    import torch

    name = file_name or Path(urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot tell a file name from URL {url!r}; pass file_name")
    dst = hub_checkpoint_dir() / name
    if dst.is_file():
        return dst
    if is_offline(offline):
        raise WeightsUnavailable(missing_weights_message(what, dst, url, hint, reason="offline mode is on"))
    prefix = sha256
    if prefix is None and check_hash:
        m = _HASH_RE.search(name)
        if m is None:
            raise ValueError(
                f"cannot check the hash of {name!r}: its name carries no -<sha256 prefix>. and no sha256 was given"
            )
        prefix = m.group(1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix if check_hash else None, progress=progress)
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise ValueError(
                f"the download of {what} from {url} does not match its sha256 ({e}); "
                f"nothing was written to {dst.parent}"
            ) from e
        raise WeightsUnavailable(missing_weights_message(what, dst, url, hint, reason=f"download failed: {e}")) from e
    except OSError as e:  # URLError, HTTPError, socket errors, refused connections
        raise WeightsUnavailable(missing_weights_message(what, dst, url, hint, reason=f"download failed: {e}")) from e
    return dst


def load_url_state_dict(url: str, map_location: str = "cpu", **kwargs: Any) -> dict[str, Any]:
    """:func:`fetch_url` then load the state dict (``weights_only=True``; ``.safetensors`` read by safetensors)."""
    path = fetch_url(url, **kwargs)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=map_location)
    import torch

    obj = torch.load(path, map_location=map_location, weights_only=True)
    return obj


def hf_download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    offline: bool = False,
    what: str = "pretrained weights",
    hint: str = "",
) -> Path:
    """A file of a Hugging Face Hub repository through huggingface_hub's cache (download when online).

    Raises:
        WeightsUnavailable: not cached and offline, or the hub is unreachable.
        ImportError: huggingface_hub is not installed (the message names it).
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("huggingface_hub is needed to fetch hub weights: pip install huggingface_hub") from e
    url = f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}"
    off = is_offline(offline)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=off))
    except Exception as e:  # LocalEntryNotFoundError, connection and HTTP errors of several types
        reason = "offline mode is on and it is not in the huggingface_hub cache" if off else f"download failed: {e}"
        raise WeightsUnavailable(missing_weights_message(what, f"hf://{repo_id}/{filename}", url, hint, reason)) from e
