"""Configuration of PoCaPNet (Demir et al., Interspeech 2023) as frozen dataclasses with the paper's defaults.

Every default cites where it comes from: the paper's section ("paper §x"), or the official code
(kubicndmr/PoCaPNet @c384c95, "code") as read in the brief, where the paper is silent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PHASES",
    "TRANSITION",
    "NUM_CLASSES",
    "ModelConfig",
    "FeatureConfig",
    "TrainConfig",
    "PocapConfig",
    "register_config",
    "get_config",
    "list_configs",
]

#: Eight surgical phases (paper §3.1) in the corpus's label order (code: label map), then the transition class.
PHASES: tuple[str, ...] = (
    "Preparation",
    "Puncture",
    "GuideWire",
    "CathPlacement",
    "CathPositioning",
    "CathAdjustment",
    "CathControl",
    "Closing",
    "Transition",
)
TRANSITION: int = 8  # code: ignore_index=8; ignored in the loss and removed from the metrics (paper §3.1)
NUM_CLASSES: int = len(PHASES)  # code: 9 outputs (8 phases + transition)


@dataclass(frozen=True)
class ModelConfig:
    """PoCaPNet architecture (paper Fig. 1 and §2.3; dimensions from the official code, brief "Architecture").

    With the defaults the network has 2,813,850 parameters ("2.8 million", paper §3.2).
    """

    image_dim: int = 1024  # code: DenseNet121 features2 -> 1024
    audio_dim: int = 1024  # code: XLSR-53 hidden size
    audio_frames: int = 349  # code: wav2vec2 frames per 7 s window (1 when features are mean-pooled)
    num_images: int = 7  # paper §2.2: seven X-ray images per step
    num_mics: int = 3  # paper §3.1: physician headset, assistant headset, ambient GoPro
    audio_stem_channels: int = 128  # code: Conv1d(349 -> 128, k1)
    audio_res_channels: tuple[int, ...] = (64, 32, 16, 8)  # code: 4 ResBlocks 128->64->32->16->8
    avg_res_blocks: int = 2  # code: AvgResBlock = 2 residual pairs of Conv1d(k3)+BN
    bn_momentum: float = 0.01  # code: BatchNorm1d(momentum=0.01) in the audio branch
    hidden_dim: int = 1024  # code: Linear(2048 -> 1024); also the length of the delayed-estimation memory
    leaky_slope: float = 0.01  # code: LeakyReLU(0.01) after the linear layer
    num_classes: int = NUM_CLASSES
    num_stages: int = 2  # paper §3.2: two-stage TCN
    num_layers: int = 10  # code: TeCNO mstcn, 10 dilated residual layers
    num_f_maps: int = 64  # code: 64 feature maps
    dropout: float = 0.5  # code: Dropout 0.5 in every dilated residual layer
    causal_conv: bool = False  # code: causal_conv=False (acausal inside each chunk); True = TeCNO causal
    positional_encoding: bool = False  # paper Table 1 row 2; code: commented out in the release
    delayed_estimation: bool = True  # paper Table 1 row 3 and the released configuration
    modalities: tuple[str, ...] = ("xray", "audio")  # paper Fig. 1: both; ("audio",) / ("xray",) = ablations
    # (the paper's future work)
    fusion: str = "concat"  # paper §2.3: concatenation -> linear; "gmu" = gated multimodal unit (Arevalo et al. 2017)
    # as in the authors' Interspeech 2024 follow-up (GMU + MS-TCN, 92.65 % on PoCaP; brief "Later work")
    cosine_classifier: bool = False  # LDAM-DRW's NormedLinear (Cao et al. 2019): logits = scale * cosine; code: off
    cosine_scale: float = 30.0  # LDAM-DRW: s = 30 (logits in [-s, s])


@dataclass(frozen=True)
class FeatureConfig:
    """Offline feature extraction (paper §2.2; details from the code's preprocessing, brief "Features")."""

    sample_rate: int = 16000  # paper §3.1: channels resampled to 16 kHz
    window_s: int = 7  # paper §2.2: seven-second causal Hann window
    hop_s: int = 1  # paper §2.2: one-second hop
    pre_emphasis: float = 0.97  # code: pre-emphasis before windowing
    normalize_waveform: bool = False  # code: no waveform normalisation (HF's XLSR processor would normalise)
    pooled: bool = False  # code: all 349 frames kept; True = mean over frames (349x smaller, a deviation)
    fp16: bool = False  # store features as float16 (halves the disk; a package option)
    batch_windows: int = 8  # windows per wav2vec2 forward
    bf16: bool | None = None  # old alias of --precision for extraction: true = bf16 (wav2vec2 and DenseNet on copies
    # cast once to bf16), false = fp32, null = --precision decides (auto: measured, pocapnet.precision); an explicit
    # --precision other than auto wins
    xray_size: int = 224  # code: frames resized to 224 x 224
    xray_batch: int = 32  # frames per DenseNet forward
    wav2vec2: str = "facebook/wav2vec2-large-xlsr-53"  # paper §2.2: XLSR-53 (a local folder or the HF cache name)
    xray_weights: str = "densenet121-res224-all"  # paper §2.2: TorchXRayVision "all" weights (or a file path)
    channels: tuple[int, ...] = (1, 2, 3)  # paper §3.1: Channel_1 physician, Channel_2 assistant, Channel_3 ambient
    chunk_s: int = 64  # seconds per resumable extraction chunk (package option, not part of the features' identity):
    # at XLSR-53 size one chunk is ~7 min of one-thread CPU here, so an interruption loses ~0.9 % of an hour on average


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (paper §3.2/§3.3; code where the paper is silent)."""

    lr: float = 9e-6  # paper §3.2
    weight_decay: float = 1e-6  # paper §3.2
    max_epochs: int = 100  # code: max_epochs=100
    patience: int = 5  # code: early stopping on validation loss, patience 5
    batch_size: int = 512  # paper §3.2 (code: 500); consecutive seconds of one operation
    loss: str = "ldam"  # paper Table 2; code: released with LDAM. One of ce, wce, focal, ldam
    focal_gamma: float = 2.0  # paper Table 2 / author's focal loss: gamma 2
    ldam_max_m: float = 0.5  # code (kaidic LDAM): max margin 0.5
    ldam_s: float = 30.0  # code (kaidic LDAM): scale s = 30
    ldam_beta: float = 0.9999  # code: effective-number weights, beta 0.9999, from epoch 0 (no DRW)
    split_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)  # paper §3.1: 60-20-20 random split by operation
    seed: int = 1881  # code: Random(1881) for the split
    grad_clip: float = 0.0  # 0 = off (the code does not clip)
    ldam_drw_epoch: int = 0  # code: effective-number weights from epoch 0; LDAM-DRW defers them (epoch 160 of 200)
    smooth_weight: float = 0.0  # code: no smoothing loss; MS-TCN (Farha & Gall 2019): 0.15 x truncated MSE
    smooth_tau: float = 4.0  # MS-TCN: log-probability differences truncated at tau = 4
    accumulate: int = 1  # chunks per optimizer step in each process (1 = code: one chunk per step)
    lr_rule: str = "none"  # lr scaling with the effective batch under torchrun: none (Adam, paper lr) or linear
    prefetch: int = 2  # feature chunks loaded ahead by a background thread (0 = off)


@dataclass(frozen=True)
class PocapConfig:
    """Everything a checkpoint needs to rebuild the pipeline."""

    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples as lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PocapConfig:
        """Inverse of :meth:`to_dict` (lists become tuples again)."""

        def build(tp: type, sub: dict[str, Any]) -> Any:
            names = {f.name for f in dataclasses.fields(tp)}
            unknown = set(sub) - names
            if unknown:
                raise ValueError(f"unknown {tp.__name__} keys {sorted(unknown)}; valid keys: {sorted(names)}")
            return tp(**{k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()})

        return cls(
            model=build(ModelConfig, d.get("model", {})),
            features=build(FeatureConfig, d.get("features", {})),
            train=build(TrainConfig, d.get("train", {})),
        )


_REGISTRY: dict[str, PocapConfig] = {}


def register_config(name: str, cfg: PocapConfig) -> PocapConfig:
    """Register a named configuration; registering a name twice raises ``ValueError``."""
    if name in _REGISTRY:
        raise ValueError(f"config {name!r} is already registered")
    _REGISTRY[name] = cfg
    return cfg


def list_configs() -> list[str]:
    """Names of the registered configurations."""
    return sorted(_REGISTRY)


def get_config(name: str = "pocapnet") -> PocapConfig:
    """Look up a registered configuration; an unknown name raises ``ValueError`` listing the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown config {name!r}; valid names: {list_configs()}")
    return _REGISTRY[name]


_FULL = PocapConfig()
register_config("pocapnet", _FULL)  # released: LDAM + delayed estimation (paper Table 2 row 4)
# Table 1 rows (class-weighted CE, paper §3.2 "Implementation details").
register_config(
    "pocapnet_tcn",
    dataclasses.replace(
        _FULL,
        model=dataclasses.replace(_FULL.model, delayed_estimation=False),
        train=dataclasses.replace(_FULL.train, loss="wce"),
    ),
)
register_config(
    "pocapnet_pe",
    dataclasses.replace(
        _FULL,
        model=dataclasses.replace(_FULL.model, delayed_estimation=False, positional_encoding=True),
        train=dataclasses.replace(_FULL.train, loss="wce"),
    ),
)
register_config("pocapnet_de", dataclasses.replace(_FULL, train=dataclasses.replace(_FULL.train, loss="wce")))
# Table 2 rows (delayed estimation on): ce, wce (= pocapnet_de), focal, ldam (= pocapnet).
register_config("pocapnet_ce", dataclasses.replace(_FULL, train=dataclasses.replace(_FULL.train, loss="ce")))
register_config("pocapnet_focal", dataclasses.replace(_FULL, train=dataclasses.replace(_FULL.train, loss="focal")))
# Streaming-friendly variant: TeCNO-style causal convolutions.
register_config("pocapnet_causal", dataclasses.replace(_FULL, model=dataclasses.replace(_FULL.model, causal_conv=True)))
# Tiny variant for tests (timm's test_resnet idea): small feature dims, small TCN.
register_config(
    "pocapnet_tiny",
    PocapConfig(
        model=ModelConfig(
            image_dim=32,
            audio_dim=32,
            audio_frames=349,
            audio_stem_channels=8,
            audio_res_channels=(8, 4),
            hidden_dim=24,
            num_layers=3,
            num_f_maps=8,
        ),
        features=FeatureConfig(wav2vec2="tiny-random", xray_weights="tiny-random", batch_windows=4, bf16=False),
        train=TrainConfig(lr=1e-3, max_epochs=2, batch_size=32, seed=0),
    ),
)
# Demo variant: random tiny extractors (no real weights offline) and a faster learning rate for ~2 min on CPU.
register_config(
    "pocapnet_demo",
    PocapConfig(
        model=ModelConfig(
            image_dim=32,
            audio_dim=32,
            audio_stem_channels=32,
            audio_res_channels=(16, 8),
            hidden_dim=64,
            num_f_maps=32,
            dropout=0.3,
        ),
        features=FeatureConfig(
            wav2vec2="tiny-random", xray_weights="tiny-random", batch_windows=16, fp16=True, bf16=False
        ),
        train=TrainConfig(lr=2e-3, weight_decay=1e-6, max_epochs=30, patience=6, batch_size=64, seed=0),
    ),
)
# The demo with TeCNO causal convolutions: streaming predictions equal the offline ones (README "Streaming vs offline").
register_config(
    "pocapnet_demo_causal",
    dataclasses.replace(
        get_config("pocapnet_demo"), model=dataclasses.replace(get_config("pocapnet_demo").model, causal_conv=True)
    ),
)
