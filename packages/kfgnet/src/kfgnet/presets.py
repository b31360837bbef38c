"""Named presets of both KFGNet stages and their registry lookups: the paper's networks, the official code's
variants, the Table 1 rows, and tiny configs for tests and the demo.

Each preset is a dict of overrides on the dataclass defaults of :mod:`kfgnet.config` (which cite the paper); each
``get_*_config(name, **overrides)`` builds the frozen config, refusing unknown names and keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kfgnet.config import ClassifierConfig, DetectorConfig, KeyFrameConfig, KeyFrameTrainConfig

__all__ = [
    "CLASSIFIER_PRESETS",
    "KEYFRAME_PRESETS",
    "KEYFRAME_TRAIN_PRESETS",
    "DETECTOR_PRESETS",
    "TABLE1_ROWS",
    "get_classifier_config",
    "get_keyframe_config",
    "get_keyframe_train_config",
    "get_detector_config",
]


CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # the paper's network, 32 x 112 x 112 clips [P §2-3]
    "kfgnet_light_c3d": {},
    # bit-compatible SPP kernels of the official 28d3f3e model.py [V]
    "kfgnet_official": {"spp_mode": "official"},
    # tiny network for tests and the demo (16 x 64 x 64 clips, narrow convs)
    "kfgnet_tiny": {
        "widths": (8, 16, 24, 32),
        "attention_widths": (8, 4),
        "attention_padding": 1,
        "hidden": 32,
        "num_frames": 16,
        "size": 64,
    },
    "c3d": {"arch": "c3d"},
    "r3d_18": {"arch": "r3d_18"},
    "r2plus1d_18": {"arch": "r2plus1d_18"},
}

# Table 1 rows as (name, preset, clip sampling, overrides) [P Table 1]
TABLE1_ROWS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("C3D", "c3d", "uniform", {}),
    ("R3D", "r3d_18", "uniform", {}),
    ("R2plus1D", "r2plus1d_18", "uniform", {}),
    ("lightweight C3D", "kfgnet_light_c3d", "uniform", {"spp": False, "motion_attention": False}),
    ("+ key-frame", "kfgnet_light_c3d", "keyframe", {"spp": False, "motion_attention": False}),
    ("+ key-frame + motion attention", "kfgnet_light_c3d", "keyframe", {"spp": False}),
    ("+ key-frame + 3D SPP", "kfgnet_light_c3d", "keyframe", {"motion_attention": False}),
    ("Ours (key-frame + SPP + motion)", "kfgnet_light_c3d", "keyframe", {}),
)

KEYFRAME_PRESETS: dict[str, dict[str, Any]] = {
    "kfgnet_keyframe": {},  # the paper's LSTM scorer [P §2]
    # the official 1572ffc scoreNet: 6-d geo input, LayerNorm, non-local, 2-layer BiLSTM(512), FC 128, sigmoid [V]
    "official_2023": {
        "feature_dim": 4096,
        "geo_dim": 6,
        "feat_embed": 512,
        "lstm_hidden": 512,
        "lstm_layers": 2,
        "bidirectional": True,
        "non_local": True,
        "layer_norm": True,
        "sigmoid": True,
    },
    "kfgnet_keyframe_tiny": {
        "feature_dim": 64,
        "feat_embed": 32,
        "geo_embed": 32,
        "lstm_hidden": 32,
        "head_hidden": 16,
        "bidirectional": True,
    },
}

# stage-1 optimisation per key-frame preset: the paper's [P §3], the official trainRNN.py [V brief §2]
KEYFRAME_TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "kfgnet_keyframe": {},
    "official_2023": {
        "lr": 1e-3,
        "weight_decay": 1e-8,
        "lr_milestones": (10,),
        "lr_gamma": 0.1,
        "grad_clip": 0.5,
        "mask_padding": False,
        "val_every": 2,
    },
    "kfgnet_keyframe_tiny": {},
}

DETECTOR_PRESETS: dict[str, dict[str, Any]] = {
    # torchvision's recipe: ResNet50-FPN; with --weights coco / --pretrained-backbone imagenet it trains with
    # FrozenBatchNorm2d and 3 trainable stages (norm/trainable layers "auto")
    "resnet50_fpn": {},
    "mobilenet_v3_fpn": {"backbone": "mobilenet_v3_fpn", "representation": 1024},
    # DDTI (300 x 300 grey crops centred on one nodule, boxes 40-300 px): a small BN backbone trained from scratch
    # on one CPU thread in about 10 minutes (14 epochs of ~380 images at 224 px); anchors cover the large boxes
    "kfgnet_ddti": {
        "backbone": "small",
        "widths": (16, 32, 64, 96),
        "min_size": 224,
        "max_size": 224,
        "representation": 256,
        "anchor_sizes": (48, 80, 112, 144, 176, 208),
        "aspect_ratios": (0.67, 1.0, 1.5),
        "rpn_batch": 128,
        "box_batch": 128,
        "proposals_train": 300,
        "proposals_test": 100,
        "detections_per_img": 20,
        "lr": 0.02,
        "epochs": 14,
        "batch_size": 8,
        "warmup_epochs": 1.0,
    },
    "tiny": {
        "backbone": "tiny",
        "widths": (64,),
        "min_size": 128,
        "max_size": 128,
        "representation": 64,
        "anchor_sizes": (16, 32, 48, 64),
        "aspect_ratios": (0.67, 1.0, 1.5),
        "rpn_batch": 64,
        "box_batch": 64,
        "proposals_train": 100,
        "proposals_test": 30,
        "detections_per_img": 5,
        "lr": 0.02,
        "batch_size": 8,
        "warmup_epochs": 0.1,
    },
}


def _get(presets: dict[str, dict[str, Any]], cls: type, name: str, overrides: dict[str, Any] | None) -> Any:
    if name not in presets:
        raise KeyError(f"unknown preset {name!r}; valid: {', '.join(sorted(presets))}")
    kwargs = dict(presets[name])
    kwargs.update(overrides or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(kwargs) - valid)
    if bad:
        raise ValueError(f"unknown {cls.__name__} keys {bad}; valid keys: {sorted(valid)}")
    return cls(**kwargs)


def get_classifier_config(name: str = "kfgnet_light_c3d", **overrides: Any) -> ClassifierConfig:
    """Registry lookup of a classifier preset (``kfgnet_light_c3d``, ``kfgnet_tiny``, baselines)."""
    return _get(CLASSIFIER_PRESETS, ClassifierConfig, name, overrides)


def get_keyframe_config(name: str = "kfgnet_keyframe", **overrides: Any) -> KeyFrameConfig:
    """Registry lookup of a key-frame model preset (``kfgnet_keyframe``, ``official_2023``, ``..._tiny``)."""
    return _get(KEYFRAME_PRESETS, KeyFrameConfig, name, overrides)


def get_keyframe_train_config(name: str = "kfgnet_keyframe", **overrides: Any) -> KeyFrameTrainConfig:
    """Stage-1 optimisation of a key-frame preset (``official_2023``: the official lr, decay and clipping)."""
    return _get(KEYFRAME_TRAIN_PRESETS, KeyFrameTrainConfig, name, overrides)


def get_detector_config(name: str = "resnet50_fpn", **overrides: Any) -> DetectorConfig:
    """Registry lookup of a detector preset (``resnet50_fpn``, ``mobilenet_v3_fpn``, ``tiny``)."""
    return _get(DETECTOR_PRESETS, DetectorConfig, name, overrides)
