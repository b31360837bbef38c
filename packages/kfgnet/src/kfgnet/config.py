"""Frozen configuration dataclasses for both KFGNet stages, with the paper's defaults.

Every default cites where it comes from: ``[P §x]`` the MICCAI 2022 paper (``../shared/papers/kfgnet.txt``),
``[V]`` the official code as read in ``../shared/briefs/kfgnet.md``, ``[I]`` our inference (documented in README).
Ablations of Table 1 are switches here (``sampling``, ``spp``, ``motion_attention``, ``arch``), never forks.

The named presets and their lookups (``get_classifier_config`` ...) live in :mod:`kfgnet.presets`; they stay
importable from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ClassifierConfig",
    "ClassifierTrainConfig",
    "DetectorConfig",
    "KeyFrameConfig",
    "KeyFrameTrainConfig",
    "ClipConfig",
    "MotionConfig",
    "config_to_dict",
    "config_from_dict",
]

_PRESET_NAMES = frozenset(
    {"CLASSIFIER_PRESETS", "KEYFRAME_PRESETS", "KEYFRAME_TRAIN_PRESETS", "DETECTOR_PRESETS", "TABLE1_ROWS"}
    | {"get_classifier_config", "get_keyframe_config", "get_keyframe_train_config", "get_detector_config"}
)


def __getattr__(name: str) -> Any:
    """The presets of :mod:`kfgnet.presets`, importable from here (imported lazily: presets imports this module)."""
    if name in _PRESET_NAMES:
        from kfgnet import presets

        return getattr(presets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


LABELS: tuple[str, str] = ("benign", "malignant")  # index 1 = malignant = positive class [P §3, brief §6]


@dataclass(frozen=True)
class ClipConfig:
    """How a clip is cut from a video for the classifier.

    Attributes:
        num_frames: T, frames per clip; 32 [P §2 "T is empirically set to 32"].
        size: frames are resized to ``size x size`` pixels; 112 [P §3 "112 x 112 x 32"].
        sampling: ``"keyframe"`` = T consecutive frames centred on the key frame [P §2];
            ``"uniform"`` = T frames sampled uniformly over the whole video (Table 1 rows without key frame) [P §3].
        key_position: index of the key frame inside an interior clip; T // 2 = 16 [I, fork: start = k - 16].
        crop: ``"nodule"`` = a square around the key frame's nodule box, fixed over the clip, resized to ``size``
            (aspect ratio kept, zero padding at the border) [P §3 "resize each nodule to 112 x 112"]; ``"frame"`` = the
            whole frame squashed to ``size x size`` (the official loader [V]; ablation).
        crop_margin: margin added on each side of the box, as a fraction of its longer side (0.25: the nodule fills
            2/3 of the crop) [I: the paper gives none].
        min_frames: videos with fewer frames are refused; videos shorter than ``num_frames`` but at least this long
            are repeat-padded with the edge frames, with a warning (or refused with ``--no-pad-short``) [I].
        blackout: pixels (top, bottom, left, right) set to 0 on every frame before anything else: the scanner's
            burned-in text bands [I]; (0, 0, 0, 0) = off.
    """

    num_frames: int = 32
    size: int = 112
    sampling: str = "keyframe"
    key_position: int | None = None
    crop: str = "nodule"
    crop_margin: float = 0.25
    min_frames: int = 8
    blackout: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        if self.sampling not in ("keyframe", "uniform"):
            raise ValueError(f"sampling must be 'keyframe' or 'uniform', got {self.sampling!r}")
        if self.crop not in ("nodule", "frame"):
            raise ValueError(f"clip.crop must be 'nodule' or 'frame', got {self.crop!r}")
        if self.num_frames < 4 or self.size < 16:
            raise ValueError(f"clip too small: num_frames={self.num_frames} (>=4), size={self.size} (>=16)")
        if not 1 <= self.min_frames <= self.num_frames:
            raise ValueError(f"clip.min_frames must lie in 1..num_frames ({self.num_frames}), got {self.min_frames}")
        if self.crop_margin < 0 or len(self.blackout) != 4 or any(v < 0 for v in self.blackout):
            raise ValueError(
                f"clip.crop_margin must be >= 0 and clip.blackout 4 non-negative pixel counts, got "
                f"{self.crop_margin}, {self.blackout}"
            )


@dataclass(frozen=True)
class MotionConfig:
    """Motion index (V_motion) settings [P §2 "Motion attention"; brief §4].

    Attributes:
        neighbours: temporal offsets compared with each frame; (1, 2) = frames i-2, i-1, i+1, i+2 [P §2].
        ssim_win: SSIM window (uniform, skimage default 7) [I].
        data_range: SSIM data range for 0-255 frames; 255 (the fork's 100 is wrong) [brief §4].
        hist_bins: bins of the gray-level histogram compared by correlation (OpenCV HISTCMP_CORREL) [I].
        centred: use a centred (Pearson) cosine in the loss instead of the plain cosine (deviation switch) [brief §4].
    """

    neighbours: tuple[int, ...] = (1, 2)
    ssim_win: int = 7
    data_range: float = 255.0
    hist_bins: int = 64
    centred: bool = False


@dataclass(frozen=True)
class ClassifierConfig:
    """Stage 2 network: the lightweight C3D with 3D SPP and motion attention [P §2, brief §1, §3].

    Attributes:
        arch: ``"light_c3d"`` (ours) or a Table 1 baseline ``"c3d"``, ``"r3d_18"``, ``"r2plus1d_18"``.
        in_channels: 3 (frames stored as 3-channel B-mode) [V].
        widths: conv1..conv4 output channels (64, 128, 256, 512) [V].
        spp: 3-level 3D SPP (full map, 2x2x2, 1x1x1) after pool2 [P §2]; off = flatten the map only.
        spp_mode: ``"adaptive"`` (any clip size) or ``"official"`` (fixed kernels for a 2x3x3 map) [brief §1].
        motion_attention: motion attention branch after pool1 [P §2].
        attention_widths: channels of the branch's three convs (64, 16, 1) [V].
        attention_padding: spatial padding of the branch convs; 0 [V] (1 lets tiny frames reach 1x1).
        attention_sigmoid: squash V_temp with a sigmoid (official has none) [brief §10 #7].
        hidden: fc1 width 512 [V]; dropout 0.5 [P §2].
        num_classes: 2-logit cross-entropy [brief §10 #10].
        num_frames, size: the clip the network is built for (fc1's input width depends on them) [P §3].
        pretrained: baselines only: ``"none"`` or a local weights file (``.pth``/``.safetensors``).
    """

    arch: str = "light_c3d"
    in_channels: int = 3
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    spp: bool = True
    spp_mode: str = "adaptive"
    motion_attention: bool = True
    attention_widths: tuple[int, int] = (64, 16)
    attention_padding: int = 0
    attention_sigmoid: bool = False
    hidden: int = 512
    dropout: float = 0.5
    num_classes: int = 2
    num_frames: int = 32
    size: int = 112
    pretrained: str = "none"

    def __post_init__(self) -> None:
        if self.arch not in ("light_c3d", "c3d", "r3d_18", "r2plus1d_18"):
            raise ValueError(f"unknown arch {self.arch!r}; valid: light_c3d, c3d, r3d_18, r2plus1d_18")
        if self.spp_mode not in ("adaptive", "official"):
            raise ValueError(f"spp_mode must be 'adaptive' or 'official', got {self.spp_mode!r}")

    @property
    def attention_steps(self) -> int:
        """Number of V_temp weights: T after conv3 (stride 2) and pool1 (2) = T // 4 (8 for T = 32)."""
        t = (self.num_frames - 1) // 2 + 1  # conv3 stride 2, pad 1
        return t // 2


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Stage 2 optimisation [P §3 Settings].

    Attributes:
        lr: Adam 1e-3 then ``lr2`` 1e-4 after ``epochs`` epochs, for ``epochs2`` more [P §3].
        weight_decay: 1e-8 [P §3]. batch_size: 16 [P §3].
        lambda_motion: weight of L_motion in L = L_cls + L_motion; 1 [P eq. 3].
        folds: 5-fold stratified CV grouped by patient [P §3, brief §6].
        flip_prob: p of each of the T, H, W flips [V loader]; intensity_prob: p of the intensity shift
            (offset +-0.1, scale x[0.9, 1.1]) [V loader].
        bf16: bf16 autocast; channels_last: channels_last_3d memory format (speed switches, see bench/).
        num_workers: DataLoader workers (augmentation differs per worker and epoch: ``medshared.runtime.worker_rng``).
        sync_bn: SyncBatchNorm under torchrun on CUDA (BatchNorm3d statistics over the effective batch); on CPU
            each rank normalises over its own clips.
    """

    lr: float = 1e-3
    lr2: float = 1e-4
    epochs: int = 20
    epochs2: int = 20
    weight_decay: float = 1e-8
    batch_size: int = 16
    lambda_motion: float = 1.0
    folds: int = 5
    flip_prob: float = 0.5
    intensity_prob: float = 0.5
    bf16: bool = False
    channels_last: bool = False
    seed: int = 0
    num_workers: int = 0
    sync_bn: bool = False


@dataclass(frozen=True)
class DetectorConfig:
    """Stage 1 nodule detector: torchvision Faster R-CNN, one foreground class [P §2], and how it is trained.

    Attributes:
        backbone: ``"resnet50_fpn"`` (torchvision's, 1024-d box feature), ``"mobilenet_v3_fpn"``, ``"small"`` (a
            7-conv BN backbone, stride 16, sized for CPU training from scratch: the DDTI preset) or ``"tiny"`` (4
            convs, stride 8: tests and the demo).
        widths: channels of the ``small`` backbone's four stages (``tiny``: its last width).
        min_size, max_size: resize of the detector transform; 500 / 600 [P §3 "resized to 500 x 600"].
        representation: box-head (FC7) width; 1024 for the torchvision backbones.
        norm: BatchNorm of the torchvision backbones: ``"frozen"`` (FrozenBatchNorm2d, torchvision's recipe with
            pretrained weights), ``"batch"`` (trainable BN, needed from random init) or ``"auto"`` = frozen when
            ``pretrained_backbone`` or ``weights`` is set, else batch (torchvision's own rule).
        trainable_backbone_layers: ResNet stages that train (0..5); -1 = torchvision's rule: 3 with pretrained
            weights, 5 (all) from random init.
        pretrained_backbone: ``"none"``, ``"imagenet"`` (torchvision's ImageNet weights via torch.hub's cache) or a
            local weights file.
        weights: full-detector weights: ``"none"``, ``"coco"`` (torchvision's COCO ``fasterrcnn_*`` weights via
            torch.hub's cache) or a local file of them; the 91-class predictor is replaced by a 2-class one.
        anchor_sizes, aspect_ratios: the RPN anchors (one size per FPN level for the torchvision backbones,
            all sizes on the single map of ``small`` / ``tiny``).
        rpn_batch, box_batch: sampled anchors / proposals per image in training (torchvision 256 / 512).
        proposals_train, proposals_test: proposals kept after NMS (torchvision 2000 / 1000).
        detections_per_img: detections returned per image (torchvision 100).
        lr, momentum, weight_decay, epochs, batch_size: SGD (torchvision reference settings; lr for batch_size);
            warmup_epochs of linear warm-up then cosine decay to 0.
        hflip: probability of a horizontal flip in training.
        score_threshold: detections kept for the key-frame stage and evaluation [I].
    """

    backbone: str = "resnet50_fpn"
    widths: tuple[int, ...] = (16, 32, 64, 96)
    min_size: int = 500
    max_size: int = 600
    representation: int = 1024
    norm: str = "auto"
    trainable_backbone_layers: int = -1
    pretrained_backbone: str = "none"
    weights: str = "none"
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch: int = 256
    box_batch: int = 512
    proposals_train: int = 2000
    proposals_test: int = 1000
    detections_per_img: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 10
    batch_size: int = 4
    warmup_epochs: float = 0.5
    hflip: float = 0.5
    score_threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.backbone not in ("resnet50_fpn", "mobilenet_v3_fpn", "small", "tiny"):
            raise ValueError(
                f"unknown detector backbone {self.backbone!r}; valid: resnet50_fpn, mobilenet_v3_fpn, small, tiny"
            )
        if self.norm not in ("auto", "frozen", "batch"):
            raise ValueError(f"detector norm must be auto, frozen or batch, got {self.norm!r}")
        if not -1 <= self.trainable_backbone_layers <= 5:
            raise ValueError(
                f"trainable_backbone_layers must be -1 (torchvision's rule) or 0..5, "
                f"got {self.trainable_backbone_layers}"
            )
        if self.weights != "none" and self.backbone not in ("resnet50_fpn", "mobilenet_v3_fpn"):
            raise ValueError(
                f"detector weights {self.weights!r} need backbone resnet50_fpn or mobilenet_v3_fpn "
                f"(torchvision's COCO checkpoints), not {self.backbone!r}"
            )

    @property
    def pretrained(self) -> bool:
        """True when any pretrained weights (backbone or full detector) are loaded."""
        return self.pretrained_backbone != "none" or self.weights != "none"

    @property
    def frozen_bn(self) -> bool:
        """Whether the torchvision backbone uses FrozenBatchNorm2d (see ``norm``)."""
        return self.norm == "frozen" or (self.norm == "auto" and self.pretrained)

    @property
    def trainable_layers(self) -> int:
        """Trainable ResNet stages after torchvision's rule (``trainable_backbone_layers = -1``)."""
        if self.trainable_backbone_layers >= 0:
            return self.trainable_backbone_layers
        return 3 if self.pretrained else 5


@dataclass(frozen=True)
class KeyFrameConfig:
    """Stage 1 key-frame score model [P §2; official preset = brief §2].

    Attributes:
        feature_dim: detector box feature width (FC7); 1024 for torchvision's head, 4096 official [V].
        feat_embed: FC 256 on the feature [P]; geo_embed: FC 256 on the box + frame vector [P].
        geo_dim: 5 = normalised box (4) + frame index [P]; 6 adds the detection score [V].
        lstm_hidden, lstm_layers, bidirectional: the LSTM [P: one LSTM, size not given -> 256, 1, uni] [I].
        head_hidden: width of the first of the two FCs after the LSTM [I, official 128].
        non_local: the official channel-affinity non-local block [V]; layer_norm: LayerNorm after the embeddings [V].
        sigmoid: squash the score to (0, 1) [V].
        box_norm: ``"minmax"`` per-video min-max of raw coordinates [V] or ``"image"`` (divide by frame size).
        score_norm: with ``geo_dim=6``, the detection score as is (``"none"`` [V]) or min-max per video
            (``"minmax"``, [I]: a weakly trained detector's scores span a narrow range, e.g. 0.1-0.25, so the raw
            value hardly moves the 256-wide embedding; stretched per video it says where the nodule is most visible).
        feat_similarity: ``"exp"`` exp(-d/d_max) [V] or ``"linear"`` 1 - d/d_max [P "unify to 0..1"].
        max_entries: cap of entries per video (299 linspace + key) [V].
    """

    feature_dim: int = 1024
    feat_embed: int = 256
    geo_embed: int = 256
    geo_dim: int = 5
    lstm_hidden: int = 256
    lstm_layers: int = 1
    bidirectional: bool = False
    head_hidden: int = 128
    non_local: bool = False
    layer_norm: bool = False
    sigmoid: bool = False
    box_norm: str = "minmax"
    score_norm: str = "none"
    feat_similarity: str = "exp"
    max_entries: int = 300

    def __post_init__(self) -> None:
        if self.geo_dim not in (5, 6):
            raise ValueError(f"geo_dim must be 5 (box + frame) or 6 (+ detection score), got {self.geo_dim}")
        if self.box_norm not in ("minmax", "image"):
            raise ValueError(f"box_norm must be 'minmax' or 'image', got {self.box_norm!r}")
        if self.score_norm not in ("none", "minmax"):
            raise ValueError(f"score_norm must be 'none' or 'minmax', got {self.score_norm!r}")
        if self.feat_similarity not in ("exp", "linear"):
            raise ValueError(f"feat_similarity must be 'exp' or 'linear', got {self.feat_similarity!r}")


@dataclass(frozen=True)
class KeyFrameTrainConfig:
    """Stage 1 LSTM optimisation: Adam 0.01, batch 64, 20 epochs, MSE [P §3]; the official code's extras [V] are
    switches, all set by the ``official_2023`` preset (lr 1e-3, weight decay 1e-8, x0.1 at epoch 10, gradient-norm
    clip 0.5, MSE over the padding too).

    Attributes:
        lr, epochs, batch_size, weight_decay: Adam settings; batch_size is the effective batch under torchrun.
        lr_milestones, lr_gamma: step decay (MultiStepLR) epochs and factor; () = constant lr.
        grad_clip: gradient-norm clip (0 = off).
        mask_padding: MSE over real entries only [I]; False averages over the zero padding too [V].
        val_fraction: patients held out to pick the best epoch (D = 0 accuracy, ties: D <= 2, then lower MSE) [V
            selects by exact hit]; 0 = keep the last epoch.
        val_every: validate every k epochs (official 2).
    """

    lr: float = 0.01
    epochs: int = 20
    batch_size: int = 64
    weight_decay: float = 0.0
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    grad_clip: float = 0.0
    mask_padding: bool = True
    val_fraction: float = 0.2
    val_every: int = 1
    seed: int = 0


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a (possibly nested) config dataclass; tuples become lists."""
    return json_safe(dataclasses.asdict(cfg))


def json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`config_to_dict` output (lists back to tuples)."""
    kwargs = {}
    types = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if k not in types:
            raise ValueError(f"unknown {cls.__name__} key {k!r} in checkpoint/config; valid: {sorted(types)}")
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)
