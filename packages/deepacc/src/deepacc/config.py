"""Configuration of DeepACC (Luo et al., ISBI 2021, doi:10.1109/ISBI48211.2021.9433943, arXiv June 2020).

Frozen dataclasses hold the paper's defaults, each cited to its section ("Sec. 3.1" etc.). Values the paper leaves
open follow the package brief (tag [I] = inferred, [V] = verified in torchvision/mmdetection source). A registry maps
names to configs: ``deepacc_r101`` (paper), Table 1 rows ``table1_a`` .. ``table1_f``, the Table 2 baselines
``faster_rcnn_r101`` and ``retinanet_r101``, and ``deepacc_tiny`` (a light BatchNorm backbone for tests and the demo).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from medshared.registry import Registry

__all__ = [
    "CLASS_NAMES",
    "DENVER_GROUPS",
    "DeepACCConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "create_config",
    "list_configs",
    "register_config",
]

#: Display names of the 25 torchvision labels (0 = background; X = 23, Y = 24).
CLASS_NAMES: tuple[str, ...] = ("bg", *[str(i) for i in range(1, 23)], "X", "Y")

#: Denver groups A-G in torchvision labels (Sec. 2.4): A 1-3, B 4-5, C 6-12 + X, D 13-15, E 16-18, F 19-20, G 21-22 + Y.
DENVER_GROUPS: dict[str, tuple[int, ...]] = {
    "A": (1, 2, 3),
    "B": (4, 5),
    "C": (6, 7, 8, 9, 10, 11, 12, 23),
    "D": (13, 14, 15),
    "E": (16, 17, 18),
    "F": (19, 20),
    "G": (21, 22, 24),
}


@dataclass(frozen=True)
class ModelConfig:
    """Detector architecture and the DeepACC head switches (Table 1 rows are combinations of the four switches)."""

    # --- backbone (Sec. 2.1: ResNet-101 + FPN) ---
    backbone: str = "resnet101"  # resnet18|resnet34|resnet50|resnet101|tiny; Sec. 2.1
    norm: str = "frozen_bn"  # frozen_bn (pretrained) | bn (random init; brief Sec. 7 "random-init explosion")
    trainable_layers: int = 3  # mmdet frozen_stages=1 [I]
    fpn_channels: int = 256  # torchvision/mmdet FPN width [V]
    fpn_min_level: int = 2  # lowest pyramid level P2 (stride 4) as in the paper's FPN; 3 drops P2 (tiny config)
    # lowest level RoIAlign pools from; 0 = fpn_min_level. 2 with fpn_min_level 3: RoIs pool from P2 (stride 4)
    # while the RPN stays on P3-P5 (small chromosomes: a 14 px box is 1.75 cells of P3, 3.5 of P2) [I]
    roi_min_level: int = 0
    tiny_widths: tuple[int, int, int, int] = (16, 32, 64, 96)  # only for backbone="tiny"
    # --- image transform (torchvision/mmdet defaults [V]) ---
    min_size: int = 800
    max_size: int = 1333
    # --- RPN (mmdet 2020 config [V]) ---
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per level P2-P6 (Faster R-CNN)
    retinanet_anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # P3-P7, x 2^(0, 1/3, 2/3) (torchvision)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7  # torchvision / mmdet [V]
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    # --- RoI sampling (identical in mmdet and torchvision [V]) ---
    roi_output_size: int = 7
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    representation_size: int = 1024  # "two 1024x1024 fully connected layers", Sec. 2.1
    num_classes: int = 25  # 24 chromosome classes + background
    # --- head type and Table 1 switches ---
    arch: str = "deepacc"  # deepacc (Faster R-CNN + custom RoIHeads) | retinanet (Table 2 baseline)
    separate_reg: bool = True  # "sep": isolated classification and regression branches, Sec. 2.1 / Table 1(b)
    aam: bool = True  # margin branch with Additive Angular Margin loss, Sec. 2.2
    siamese: bool = True  # siamese inference branch, Sec. 2.3
    gia: bool = True  # Group Inner-Adjacency loss, Sec. 2.4
    # --- margin branch (Sec. 3.1: m = 0.25, s = 64) ---
    margin: float = 0.25
    scale: float = 64.0
    margin_on_bg: bool = True  # ArcFace margin also on background targets [I]
    # Embedding of the margin branch (heads.ClassHead): relu (torchvision TwoMLPHead; collapses, README "Margin
    # branch health") | linear (fc7 without ReLU) | bn (fc7 without ReLU + BatchNorm1d) [I]
    margin_embedding: str = "bn"
    easy_margin: bool = False  # insightface easy_margin: no margin where cos <= 0 [I]
    # s at the start of train.margin_warmup_iters (ramped linearly to `scale`): 8, so L_CE of the inference branch
    # starts near ln 25 instead of 45 (README "Margin branch health") [I]
    warmup_scale: float = 8.0
    # --- inference branch (Eq. 2) ---
    # Template threshold of Eq. 2 (not given in the paper [I]); it is the only gate between global and local
    # centres, from the first training iteration on (Sec. 2.3: "we set a threshold delta to control where local class
    # center W_I,j comes from"). An earlier global-only warm-up followed by a hard switch made L_CE jump; see README.
    delta: float = 0.5
    # Templates of Eq. 2 (local RoI embeddings and global W_M rows) without gradient from L_CE (True: W_M is learned
    # by L_AAM alone). False (default): L_CE trains them too, as Eq. 4 implies. Measured with the centre-spread penalty
    # and s 8 below (real-crop demo, 8 epochs, seed 0, README "Margin branch health"): False 0.274 mAP@0.5, centres
    # pairwise 0.07; True (the previous default) collapsed the centres towards the cone without the penalty [I/measured]
    detach_templates: bool = False
    exclude_gt_templates: bool = False  # keep GT boxes added as proposals out of template selection [I]
    # Inference-branch logits. False: Eq. 2 as printed, W_I^T x_i + b with x_i not normalised (the Remark of Sec. 2.3).
    # True: s * n(x_i)^T W_I + b. Measured on real-crop spreads, full head, 3 seeds (README): True 0.193 +- 0.014,
    # False 0.117 +- 0.032 mAP@0.5, so the normalised form is the default (a deviation from the printed Eq. 2).
    inference_feature_norm: bool = True
    # s of s * n(x_i) in the inference branch (not in the paper; 0 = the margin branch's `scale`, 64, the previous
    # default). At 64 the 24-class softmax of an uncertain classifier is calibrated only when all templates lie in one
    # cone (logit gaps s * (1 - cos) of ~4): the centre collapse. Measured (README "Margin branch health", real-crop
    # demo, 8 epochs, seed 0, with the penalty below): s 4 / 8 / 16 / 32 -> mAP@0.5 0.233 / 0.274 / 0.226 / 0.211;
    # a learned s (NormFace) settled at 3.7. AdaCos's fixed scale for 25 classes is sqrt(2) ln 24 = 4.5 [I/measured]
    inference_scale: float = 8.0
    inference_scale_learned: bool = False  # learn that s (as log s, from inference_scale) instead [I]
    # Weight of the centre-spread penalty ||mean_c n(w_c)||^2 on the foreground rows of W_M (losses.centre_spread_loss;
    # not in the paper; 0 = off, the ablation). Without it the AAM at s = 64 still pulls the centres together
    # (pairwise 0.785 and falling local-template share at 8 epochs, 0.96 at 18 with s 64); with 1.0: 0.07
    # [I/measured, README "Margin branch health"]
    centre_spread_weight: float = 1.0
    # --- GIA (Eq. 3) ---
    detach_partner: bool = False  # [I]
    # --- loss weights (Eq. 4: alpha = 0.1, beta = 1.0, gamma = 0.1) ---
    aam_weight: float = 0.1
    ce_weight: float = 1.0
    gia_weight: float = 0.1
    reg_beta: float = 1.0  # RCNN smooth-L1 beta of mmdet 2020 [V]; torchvision uses 1/9
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # = mmdet stds 0.1/0.2 [V]
    # --- post-processing (torchvision/mmdet defaults [V]) ---
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    # Detections kept per image. 300, not mmdet's 100: a spread holds 46 chromosomes and every RoI is a candidate for
    # each of 24 classes, so at 100 about two hypotheses per chromosome survive and the cap, not the model, cuts the
    # recall of the lower-ranked correct classes. evaluate / demo report mAP@0.5 at both (``map50_at``) [I].
    detections_per_img: int = 300


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (Sec. 3.1, mmdet "2x" schedule)."""

    epochs: int = 24  # Sec. 3.1
    lr: float = 0.02  # Sec. 3.1, at batch 1
    # literal: the paper's 0.02 as is; linear: lr * effective batch / base_batch_size (0.00125 at batch 1, mmdet's
    # reading of 0.02 as a 16-image value). Measured on real-crop spreads at batch 1 (README): literal 0.098 vs linear
    # 0.064 mAP@0.5 (seed 0), so the paper's literal value is the default.
    lr_scaling: str = "literal"
    base_batch_size: int = 16  # batch the 0.02 of mmdet assumes [V] (used by lr_scaling: linear)
    batch_size: int = 1  # Sec. 3.1
    momentum: float = 0.9  # Sec. 3.1
    weight_decay: float = 1e-4  # mmdet default [V]
    milestones: tuple[int, ...] = (16, 22)  # x0.1 at epochs 16 and 22, Sec. 3.1
    gamma: float = 0.1
    warmup_iters: int = 500  # mmdet linear warm-up [V]
    warmup_factor: float = 0.001  # [V]
    hflip_prob: float = 0.5  # Sec. 3.1
    grad_clip: float = 0.0  # 0 = off (mmdet 2x config has none)
    # s / m warm-up: over these iterations m ramps linearly from 0 to model.margin and s from model.warmup_scale to
    # model.scale (0 = off): the margin branch first learns as a gentle normalised softmax, so neither the ArcFace
    # penalty nor s = 64 meets an unseparated embedding (both collapses, README "Margin branch health") [I]
    margin_warmup_iters: int = 500
    checkpoint_every: int = 500  # iterations between mid-epoch resume points (0: only at epoch ends)
    val_every: int = 1  # epochs between validations (best checkpoint by mAP@0.5) when validation data is given
    scan_images: bool = True  # decode every image before training; all unreadable / wrong-size ones reported at once
    empty_images: str = "keep"  # keep images without annotations as negatives | reject them
    num_workers: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol (Sec. 3.1; brief Sec. 4)."""

    iou_threshold: float = 0.5  # mAP@0.5 and TP rule
    acc_score_thresh: float = 0.5  # "p >= 0.5", Sec. 3.1
    agnostic_nms_thresh: float = 0.7  # "class-agnostic NMS (0.7 threshold)", Sec. 3.1


@dataclass(frozen=True)
class DeepACCConfig:
    """Full configuration: model, training and evaluation."""

    name: str = "deepacc_r101"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------------------------- registry
_REGISTRY: Registry[DeepACCConfig] = Registry("config")


def register_config(cfg: DeepACCConfig) -> DeepACCConfig:
    """Register ``cfg`` under ``cfg.name``; a duplicate name raises ``ValueError``."""
    return _REGISTRY.register(cfg.name, cfg)


def list_configs() -> list[str]:
    """Names of the registered configs."""
    return _REGISTRY.names()


def create_config(name: str = "deepacc_r101") -> DeepACCConfig:
    """Return the registered config ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    return _REGISTRY.get(name)


def _with_model(name: str, base: DeepACCConfig, **model_kw: Any) -> DeepACCConfig:
    return dataclasses.replace(base, name=name, model=dataclasses.replace(base.model, **model_kw))


# The paper's images are 1600x1200 (Sec. 3.1): min/max size 1200/1600 keeps them at native resolution (torchvision's
# 800/1333 would shrink them to 2/3). lr: mmdet's lr 0.02 is for a total batch of 16 (8 GPUs x 2 images; the
# `faster_rcnn_r50_fpn_1x` config: "lr=0.02 for 8 GPUs x 2 img/gpu"), and the linear scaling rule (Goyal et al. 2017,
# arXiv:1706.02677) gives 0.02 x B / 16 = 0.00125 per image for the pretrained R101: `lr_scaling: linear`. The
# literal 0.02 at batch 1 won only on the random-init tiny model (README), where a small lr mainly slows learning.
_PAPER = register_config(
    DeepACCConfig(
        model=ModelConfig(min_size=1200, max_size=1600),
        train=TrainConfig(lr_scaling="linear"),
    )
)
# Table 1 ablation rows (validation set). (c) trains the margin branch alone; Sec. 3.1 sets alpha = 0.1 "in all
# experiments", so L_AAM keeps weight 0.1 there too (an earlier version used 1.0 [I]; both measured in the README).
# (d) has the margin branch without margin (m = 0, normalised softmax) to give templates.
register_config(_with_model("table1_a", _PAPER, separate_reg=False, aam=False, siamese=False, gia=False))
register_config(_with_model("table1_b", _PAPER, separate_reg=True, aam=False, siamese=False, gia=False))
register_config(_with_model("table1_c", _PAPER, aam=True, siamese=False, gia=False))
register_config(_with_model("table1_d", _PAPER, aam=False, siamese=True, gia=False))
register_config(_with_model("table1_e", _PAPER, aam=True, siamese=True, gia=False))
register_config(_with_model("table1_f", _PAPER, aam=True, siamese=True, gia=True))
# Table 2 baselines.
register_config(_with_model("faster_rcnn_r101", _PAPER, separate_reg=False, aam=False, siamese=False, gia=False))
register_config(_with_model("retinanet_r101", _PAPER, arch="retinanet"))

_TINY_MODEL = dict(
    backbone="tiny",
    norm="bn",
    trainable_layers=5,
    fpn_channels=32,
    fpn_min_level=3,
    min_size=384,
    max_size=384,
    anchor_sizes=(16, 32, 64, 128),
    rpn_pre_nms_top_n_train=600,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_train=300,
    rpn_post_nms_top_n_test=150,
    box_batch_size_per_image=128,
    representation_size=256,
    retinanet_anchor_sizes=(16, 32, 64, 128, 256),
)
#: Light config for tests and the demo: small BatchNorm CNN + FPN(32) on P3-P5, 384 px images, 256-wide heads.
register_config(
    DeepACCConfig(
        name="deepacc_tiny",
        model=ModelConfig(**_TINY_MODEL),  # type: ignore[arg-type]
        train=TrainConfig(
            epochs=12,
            lr=0.02,
            lr_scaling="literal",
            batch_size=2,
            milestones=(9, 11),
            warmup_iters=50,
            grad_clip=10.0,
            margin_warmup_iters=200,
        ),
    )
)
register_config(
    _with_model(
        "faster_rcnn_tiny", create_config("deepacc_tiny"), separate_reg=False, aam=False, siamese=False, gia=False
    )
)


# ------------------------------------------------------------------------------------------------- (de)serialisation
def config_to_dict(cfg: DeepACCConfig) -> dict[str, Any]:
    """Plain JSON-able dict of ``cfg`` (tuples become lists)."""
    return dataclasses.asdict(cfg)


def _coerce(cls: type, data: dict[str, Any]) -> Any:
    valid = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(valid)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for key, value in data.items():
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"{cls.__name__}.{key} must be a mapping, got {type(value).__name__}")
            kwargs[key] = _coerce(type(default), value)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{cls.__name__}.{key} must be a list, got {value!r}")
            kwargs[key] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{cls.__name__}.{key} must be true/false, got {value!r}")
            kwargs[key] = value
        elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            kwargs[key] = float(value)
        elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = value
        elif isinstance(default, str) and isinstance(value, str):
            kwargs[key] = value
        else:
            raise ValueError(f"{cls.__name__}.{key} expects {type(default).__name__}, got {value!r}")
    return kwargs


def config_from_dict(data: dict[str, Any], base: DeepACCConfig | None = None) -> DeepACCConfig:
    """Build a config from a (possibly partial) nested dict on top of ``base`` (default: the paper config).

    Unknown keys raise ``ValueError`` listing the valid keys; values are type-checked against the defaults.
    """
    base = base or create_config("deepacc_r101")
    if not isinstance(data, dict):
        raise ValueError(f"config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if "base" in data:  # allow `base: deepacc_tiny` in YAML files
        base = create_config(str(data.pop("base")))
    valid = {f.name for f in dataclasses.fields(DeepACCConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid top-level keys: {sorted(valid)} (and 'base')")
    if (
        isinstance(data.get("model"), dict)
        and data["model"]
        and "margin_embedding" not in data["model"]
        and "scale" in data["model"]
    ):  # a full config written before margin_embedding existed: the ReLU head
        data["model"] = {**data["model"], "margin_embedding": "relu"}
    if isinstance(data.get("model"), dict) and "scale" in data["model"]:
        # a full config written before the cone fix: s * n(x) at s = scale and no centre-spread penalty
        data["model"] = {"inference_scale": 0.0, "centre_spread_weight": 0.0, **data["model"]}
    for sec in ("model",):  # keys of earlier versions, read from old checkpoints and ignored
        if isinstance(data.get(sec), dict) and "template_warmup_iters" in data[sec]:
            data[sec] = {k: v for k, v in data[sec].items() if k != "template_warmup_iters"}
    out = base
    if "name" in data:
        out = dataclasses.replace(out, name=str(data["name"]))
    for section in ("model", "train", "eval"):
        if section in data:
            sub = data[section]
            if not isinstance(sub, dict):
                raise ValueError(f"config section {section!r} must be a mapping")
            current = getattr(out, section)
            kw = _coerce(type(current), sub)
            out = dataclasses.replace(out, **{section: dataclasses.replace(current, **kw)})
    _validate(out)
    return out


def _validate(cfg: DeepACCConfig) -> None:
    m = cfg.model
    if m.backbone not in ("resnet18", "resnet34", "resnet50", "resnet101", "tiny"):
        raise ValueError(f"model.backbone must be resnet18|resnet34|resnet50|resnet101|tiny, got {m.backbone!r}")
    if m.norm not in ("frozen_bn", "bn"):
        raise ValueError(f"model.norm must be frozen_bn|bn, got {m.norm!r}")
    if m.fpn_min_level not in (2, 3, 4):
        raise ValueError(f"model.fpn_min_level must be 2, 3 or 4, got {m.fpn_min_level}")
    if m.roi_min_level not in (0, 2, 3, 4) or (m.roi_min_level and m.roi_min_level > m.fpn_min_level):
        raise ValueError(f"model.roi_min_level must be 0 (= fpn_min_level) or 2..fpn_min_level, got {m.roi_min_level}")
    n_levels = 7 - m.fpn_min_level  # returned ResNet stages + the "pool" level
    if len(m.retinanet_anchor_sizes) != 5:
        raise ValueError(f"model.retinanet_anchor_sizes needs 5 sizes (P3-P7), got {m.retinanet_anchor_sizes}")
    if m.arch == "deepacc" and len(m.anchor_sizes) != n_levels:
        raise ValueError(
            f"model.anchor_sizes needs {n_levels} sizes for fpn_min_level={m.fpn_min_level}, got {m.anchor_sizes}"
        )
    if m.margin_embedding not in ("relu", "linear", "bn", "bn_noaffine"):
        raise ValueError(f"model.margin_embedding must be relu|linear|bn|bn_noaffine, got {m.margin_embedding!r}")
    if m.inference_scale < 0 or m.centre_spread_weight < 0:
        raise ValueError("model.inference_scale and model.centre_spread_weight must be >= 0")
    if m.arch not in ("deepacc", "retinanet"):
        raise ValueError(f"model.arch must be deepacc|retinanet, got {m.arch!r}")
    if m.num_classes != 25:
        raise ValueError(f"model.num_classes must be 25 (24 chromosome classes + background), got {m.num_classes}")
    if not 0.0 <= m.margin < 3.14159:
        raise ValueError(f"model.margin must be in [0, pi), got {m.margin}")
    if cfg.train.lr_scaling not in ("linear", "literal"):
        raise ValueError(f"train.lr_scaling must be linear|literal, got {cfg.train.lr_scaling!r}")
    if cfg.train.checkpoint_every < 0 or cfg.train.val_every < 1:
        raise ValueError("train.checkpoint_every must be >= 0 and train.val_every >= 1")
    if cfg.train.empty_images not in ("keep", "reject"):
        raise ValueError(f"train.empty_images must be keep|reject, got {cfg.train.empty_images!r}")


for _cfg in _REGISTRY.values():
    _validate(_cfg)
