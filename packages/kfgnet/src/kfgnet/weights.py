"""Pretrained weights for kfgnet's networks, resolved in one order everywhere.

A weights spec is ``"none"`` (random init, the paper's setting), a local file, ``"env"`` (``$KFGNET_WEIGHTS_DIR``
holding the file under torchvision's name), or a named torchvision checkpoint (``"imagenet"``, ``"coco"``,
``"kinetics"``). Named checkpoints are looked for in ``$KFGNET_WEIGHTS_DIR``, then in torch.hub's cache, and, unless
offline (``--offline``, ``HF_HUB_OFFLINE=1``, ``MEDREPRO_OFFLINE=1``), downloaded through torch.hub with the sha256
prefix of the file name checked (:func:`medshared.weights.fetch_url`). Without them, the error names the file, the URL
and the flag that trains from random init.

The URLs come from torchvision's own weight enums, so they follow the installed torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["weights_url", "resolve_weights", "load_state_dict_file", "WEIGHT_NAMES"]

#: (network, name) -> (torchvision enum path, what it is)
WEIGHT_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("resnet50", "imagenet"): ("ResNet50_Weights.IMAGENET1K_V1", "ImageNet ResNet-50 weights"),
    ("mobilenet_v3_large", "imagenet"): (
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        "ImageNet MobileNetV3-Large weights",
    ),
    ("fasterrcnn_resnet50_fpn", "coco"): (
        "detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
        "COCO Faster R-CNN ResNet50-FPN weights",
    ),
    ("fasterrcnn_mobilenet_v3_large_fpn", "coco"): (
        "detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1",
        "COCO Faster R-CNN MobileNetV3-FPN weights",
    ),
    ("r3d_18", "kinetics"): ("video.R3D_18_Weights.KINETICS400_V1", "Kinetics-400 R3D-18 weights"),
    ("r2plus1d_18", "kinetics"): ("video.R2Plus1D_18_Weights.KINETICS400_V1", "Kinetics-400 R(2+1)D-18 weights"),
}


def weights_url(network: str, name: str) -> tuple[str, str]:
    """(URL, description) of torchvision's ``name`` checkpoint of ``network`` (e.g. ``("resnet50", "imagenet")``)."""
    import importlib

    key = (network, name)
    if key not in WEIGHT_NAMES:
        valid = sorted(n for net, n in WEIGHT_NAMES if net == network)
        raise ValueError(f"no {name!r} weights for {network}; valid names: {valid or 'none'} (or a local file)")
    enum_path, what = WEIGHT_NAMES[key]
    *mod, cls, member = enum_path.split(".")
    module = importlib.import_module(".".join(["torchvision.models", *mod]))
    return getattr(getattr(module, cls), member).url, what


def resolve_weights(spec: str, network: str, hint: str, offline: bool = False) -> Path | None:
    """The local file of a weights spec (see the module docstring); None for ``"none"``.

    Args:
        spec: ``"none"``, a path, ``"env"``, or a named checkpoint (``"imagenet"``, ``"coco"``, ``"kinetics"``).
        network: torchvision network name (for named checkpoints and ``"env"``).
        hint: how to go on without the weights (names the random-init flag), used in the error.
        offline: the command's ``--offline`` flag.

    Raises:
        FileNotFoundError (``medshared.weights.WeightsUnavailable`` for downloads): naming the file, URL and hint.
    """
    from medshared.weights import fetch_url, missing_weights_message

    if spec in ("", "none", None):
        return None
    env_dir = os.environ.get("KFGNET_WEIGHTS_DIR")
    if spec == "env":
        names = [f"{network}.pth", f"{network}.safetensors"]
        for n in names:
            if env_dir and (Path(env_dir) / n).is_file():
                return Path(env_dir) / n
        raise FileNotFoundError(
            missing_weights_message(
                f"{network} weights",
                Path(env_dir or "$KFGNET_WEIGHTS_DIR") / names[0],
                None,
                hint + " (or set KFGNET_WEIGHTS_DIR to the folder holding it)",
            )
        )
    if any(net == network and n == spec for net, n in WEIGHT_NAMES):
        url, what = weights_url(network, spec)
        fname = Path(url).name
        if env_dir and (Path(env_dir) / fname).is_file():
            return Path(env_dir) / fname
        return fetch_url(url, offline=offline, what=what, hint=hint)
    p = Path(spec)
    if not p.is_file():
        named = sorted(n for net, n in WEIGHT_NAMES if net == network)
        raise FileNotFoundError(
            missing_weights_message(
                f"weights file {p}",
                None,
                None,
                f"give an existing file{', or one of ' + str(named) if named else ''}; {hint}",
            )
        )
    return p


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``), ``module.`` prefixes stripped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    return {k.removeprefix("module."): v for k, v in sd.items()}
