"""Configuration of ``lungcvt``: frozen dataclasses with the paper's defaults and a small config registry.

Paper: Neto, Arrais, Vinuto, Lucena, "Convolution-Vision Transformer for Automatic Lung Sound Classification",
SIBGRAPI 2022 (IEEE 9991756). Official code: github.com/jdcneto/Lung-Sound-Classification (``SoundLoader.py``,
``model.py``, ``Blocks.py``, ``class_balanced_loss.py``, ``Att_Network.ipynb``). Every default below cites the paper
section (``paper III-A``) or the official code (``code``) it comes from; choices that are ours are marked ``ours``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from medshared.registry import Registry

__all__ = [
    "CLASSES",
    "FeatureConfig",
    "ModelConfig",
    "TrainConfig",
    "LungCVTConfig",
    "register_config",
    "get_config",
    "list_configs",
    "config_from_dict",
    "with_overrides",
]

#: ICBHI cycle classes in label order (annotation crackles/wheezes bits -> 0 normal, 1 crackle, 2 wheeze, 3 both).
CLASSES: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")

_MODES = ("faithful", "clean")
_BACKENDS = ("librosa", "torch", "nnaudio")
_LENGTHS = ("none", "repeat")
_KEY_OPTIONAL = ("channels", "fmax", "band_limit_hz", "window", "mel_htk", "band_norm")
_BAND_NORMS = ("none", "recording")


@dataclass(frozen=True)
class FeatureConfig:
    """Feature extraction (paper III-A, official ``SoundLoader``).

    Attributes:
        sample_rate: feature rate in Hz; every recording is resampled to it (code: ``librosa.load`` default 22,050).
        n_fft: FFT size and window length in samples (paper III-A / code: librosa default 2048).
        hop_length: hop in samples (code: 512).
        n_mfcc: number of MFCCs (paper III-A: 96).
        n_mels: mel bands of the mel-spectrogram channel (paper III-A: 96).
        mfcc_n_mels: mel bands the MFCCs are computed from (faithful: 128 = librosa default used by the code;
            clean: 96). ``None`` picks it from ``mode``.
        cqt_bins: number of CQT bins (paper III-A: 96).
        cqt_bins_per_octave: CQT bins per octave (code: librosa default 12).
        cqt_fmin: lowest CQT frequency in Hz (code: librosa default C1 = 32.70 Hz).
        mode: ``"faithful"`` reproduces the code (MFCC from 128 mels passed through ``power_to_db``, ImageNet
            normalisation of dB values); ``"clean"`` uses 96-mel MFCCs standardised per cycle and dB rescaled to
            [-1, 1] (ours; brief section 9).
        length: ``"none"`` keeps each cycle's own duration and lets the resize stretch it (code); ``"repeat"``
            repeats short cycles and cuts long ones to ``repeat_seconds`` (ours, as RespireNet / Patch-Mix).
        repeat_seconds: target duration for ``length="repeat"`` (8 s, as the peers in brief section 7).
        image_size: side of the square model input (code: ``T.Resize((224, 224))``).
        mfcc_norm: clean mode's MFCC normalisation in ``to_image``: ``"cycle"`` (one mean/std per cycle) or
            ``"coefficient"`` (each coefficient standardised over time, CMVN; ours, an option: it did not help the
            tiny config, README "Demo results").
        backend: ``"librosa"`` (reference, per cycle), ``"torch"`` (batched torch with an FFT-domain multi-resolution
            CQT; ours) or ``"nnaudio"`` (batched torch with nnAudio's ``CQT1992v2`` for the CQT; slower).
        channels: ``"mono"`` (a multi-channel file is an error naming it; ICBHI is mono) or ``"mix"`` (average the
            channels, logged per file; ours).
        fmax: upper edge in Hz of the mel filter banks of the mel and MFCC channels (code: ``None`` = sr / 2). A
            band limit such as 2000 puts every mel band where 4 kHz Litt3200 audio has content (README "Devices").
        band_limit_hz: low-pass every recording at this frequency before the features (by resampling it to
            ``2 * band_limit_hz`` and back, the same path a 4 kHz Litt3200 file takes), so every device has the same
            empty upper band; ``None`` = off (code). Logged.
        window: STFT window of the mel and MFCC channels: ``"hann"`` (code: librosa default) or ``"hamming"``
            (paper Eq. 2).
        mel_htk: HTK mel formula for the mel channel (paper Eq. 3) instead of librosa's Slaney default (code). The
            MFCC channel uses HTK in both (code: ``mfcc(htk=True)``).
        band_norm: ``"none"`` (code) or ``"recording"`` (ours; channel compensation against a stethoscope's fixed
            spectral colouring, cepstral-mean-normalisation style): every row (MFCC coefficient, mel band, CQT bin)
            minus its mean over all frames of all of the recording's cycles, then each cycle's mel and CQT channel
            centred on -40 dB (:func:`lungcvt.features.band_normalise`).
    """

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mfcc: int = 96
    n_mels: int = 96
    mfcc_n_mels: int | None = None
    cqt_bins: int = 96
    cqt_bins_per_octave: int = 12
    cqt_fmin: float = 32.703195662574764
    mode: str = "faithful"
    length: str = "none"
    repeat_seconds: float = 8.0
    image_size: int = 224
    backend: str = "librosa"
    mfcc_norm: str = "cycle"
    channels: str = "mono"
    fmax: float | None = None
    band_limit_hz: float | None = None
    window: str = "hann"
    mel_htk: bool = False
    band_norm: str = "none"

    def __post_init__(self) -> None:
        if self.band_norm not in _BAND_NORMS:
            raise ValueError(f"features.band_norm must be one of {_BAND_NORMS}, got {self.band_norm!r}")
        if self.channels not in ("mono", "mix"):
            raise ValueError(f"features.channels must be 'mono' or 'mix', got {self.channels!r}")
        if self.window not in ("hann", "hamming"):
            raise ValueError(f"features.window must be 'hann' or 'hamming', got {self.window!r}")
        for name in ("fmax", "band_limit_hz"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= self.sample_rate / 2:
                raise ValueError(f"features.{name} must be in (0, sample_rate/2 = {self.sample_rate / 2:g}], got {v}")
        if self.mode not in _MODES:
            raise ValueError(f"features.mode must be one of {_MODES}, got {self.mode!r}")
        if self.backend not in _BACKENDS:
            raise ValueError(f"features.backend must be one of {_BACKENDS}, got {self.backend!r}")
        if self.mfcc_norm not in ("cycle", "coefficient"):
            raise ValueError(f"features.mfcc_norm must be 'cycle' or 'coefficient', got {self.mfcc_norm!r}")
        if self.length not in _LENGTHS:
            raise ValueError(f"features.length must be one of {_LENGTHS}, got {self.length!r}")
        for name in ("sample_rate", "n_fft", "hop_length", "n_mfcc", "n_mels", "cqt_bins", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"features.{name} must be positive, got {getattr(self, name)}")

    @property
    def effective_mfcc_n_mels(self) -> int:
        """Mel bands used under the MFCCs: 128 in faithful mode (librosa default in the code), else ``n_mels``."""
        if self.mfcc_n_mels is not None:
            return self.mfcc_n_mels
        return 128 if self.mode == "faithful" else self.n_mels

    def spectral_key(self) -> dict[str, Any]:
        """The settings that change the cached (pre-resize) features; hashed into the cache key."""
        d = asdict(self)
        d.pop("image_size")
        d.pop("mfcc_norm")  # applied in to_image, after the cache
        d["mfcc_n_mels"] = self.effective_mfcc_n_mels
        for name in _KEY_OPTIONAL:  # options added later enter the key only when set, so older caches stay valid
            if d[name] == _FEATURE_DEFAULTS[name]:
                d.pop(name)
        return d


_FEATURE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FeatureConfig)}


@dataclass(frozen=True)
class ModelConfig:
    """Model (paper III-B/C, official ``DeiTCnn``).

    Attributes:
        backbone: timm DeiT name (paper Table II: ``deit_small_patch16_224`` / ``deit_base_patch16_224``).
        backbone_depth: override the number of transformer blocks (``None`` = the variant's; tiny test configs only).
        patch_size: override the patch size (``None`` = 16; tiny test configs only).
        global_pool: ``"token"`` (DeiT class token, code) or ``"avg"`` (mean of patch tokens, no class token; used by
            the from-scratch tiny config, which does not learn from a class token on a few hundred cycles);
            ``"max"`` / ``"avgmax"`` (timm's token max / mean of mean and max; ours, for local events).
        img_size: input side in pixels (code: 224).
        num_classes: ICBHI 4-class task (paper IV).
        use_cnn: the three-branch convolution block (paper Table II "+ CNN").
        use_attention: the CBAM block (paper Table II "+ Att").
        share_branch_conv: one 3x3 1->1 convolution shared across the three feature channels (code); ``False`` gives
            three independent convolutions (paper III-B wording).
        cbam_order: ``"official"`` = spatial gate (with BN + ReLU) then channel gate (code ``Blocks.py``);
            ``"standard"`` = channel then spatial gate without the ReLU (Woo et al. 2018, paper Eq. 11-12).
        attention_channels: width of the attention block (code: 16).
        bn_momentum: momentum of the spatial gate's BatchNorm (code: 0.01; at that value the running statistics
            need hundreds of steps to settle, so short runs use 0.1).
        reduction: channel-MLP reduction ratio (code: 16, giving a 1-unit hidden layer).
        front_init: ``"torch"`` (PyTorch default init of the convolution block, code) or ``"identity"`` (the branch
            conv and the 3->C->3 attention convs start as a pass-through of the three feature channels plus the
            default-initialised extra channels; ours, for short from-scratch runs where the default init shrinks the
            input about 8x and the DeiT learns much later).
        head_hidden: hidden width of the classifier head (code: 512).
        head_dropout: head dropout (code: 0.2).
        pretrained: initialise DeiT from ImageNet weights (paper IV-C: DeiT pre-trained weights).
        ensemble: members (``1`` = the paper's single model). ``M > 1``: M models from different random inits trained
            side by side on the same batches, each with its own loss; a prediction is the log of their mean
            probability (:class:`lungcvt.model.LungCVTEnsemble`; ours, a deep ensemble, for the CPU recipe).
    """

    backbone: str = "deit_base_patch16_224"
    backbone_depth: int | None = None
    patch_size: int | None = None
    global_pool: str = "token"
    img_size: int = 224
    num_classes: int = 4
    use_cnn: bool = True
    use_attention: bool = True
    share_branch_conv: bool = True
    cbam_order: str = "official"
    attention_channels: int = 16
    bn_momentum: float = 0.01
    front_init: str = "torch"
    reduction: int = 16
    head_hidden: int = 512
    head_dropout: float = 0.2
    pretrained: bool = True
    ensemble: int = 1

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError(f"model.ensemble must be >= 1 (members), got {self.ensemble}")
        if self.cbam_order not in ("official", "standard"):
            raise ValueError(f"model.cbam_order must be 'official' or 'standard', got {self.cbam_order!r}")
        if not self.backbone.startswith("deit"):
            raise ValueError(
                f"model.backbone must be a timm DeiT name (deit_tiny/small/base...), got {self.backbone!r}"
            )
        if self.front_init not in ("torch", "identity"):
            raise ValueError(f"model.front_init must be 'torch' or 'identity', got {self.front_init!r}")
        if self.global_pool not in ("token", "avg", "avgmax", "max"):
            raise ValueError(f"model.global_pool must be 'token', 'avg', 'avgmax' or 'max', got {self.global_pool!r}")
        if self.num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {self.num_classes}")


@dataclass(frozen=True)
class TrainConfig:
    """Training (paper IV-B/C, official notebook).

    Attributes:
        lr: Adam learning rate (paper IV-C: 1e-4; the notebook used 1e-3).
        weight_decay: Adam weight decay (code: 0).
        warmup_steps: linear learning-rate warm-up steps (paper: fixed lr, 0; the tiny config uses 60).
        lr_schedule: ``"constant"`` (paper) or ``"cosine"`` (decay to 0 over ``epochs``; ours, the tiny config,
            whose validation score flipped between all-normal and all-abnormal epochs at a fixed 1e-3).
        time_roll: training augmentation: rotate each feature image by a random number of time columns (ours).
        batch_size: mini-batch size (code: 32).
        epochs: number of epochs (code: 100).
        cb_beta: class-balanced loss beta (paper Eq. 13; code 0.99 is a no-op, brief section 3; ours 0.999).
        mixup: mixup on the input tensors (code: on).
        mixup_alpha: Beta(alpha, alpha) for mixup (code: 2.0).
        val_fraction: fraction of training *patients* held out for model selection (ours; the code's validation
            reused training cycles, brief section 4).
        seed: random seed.
        bf16: bf16 autocast during training and inference (ours; off by default on CPU for exactness).
        subset_fraction: train on this stratified fraction of the training cycles (the notebook's two successive
            stratified 50 % splits left 25 %: ``lungcvt_notebook`` uses 0.25; brief section 4). Logged.
        shuffle: shuffle the training cycles every epoch (the notebook's loader had ``shuffle=False``).
        lr_rule: under torchrun, ``"none"`` keeps ``lr`` whatever the effective batch; ``"linear"`` scales it by
            effective batch / ``lr_base_batch`` (Goyal et al. 2017). ``batch_size`` is per process.
        lr_base_batch: the batch ``lr`` was tuned for (code: 32).
        tune_normal_bias: after each validation pass, choose the offset added to the normal class's logit that
            maximises the validation ICBHI Score (:func:`lungcvt.scoring.tune_normal_bias`; ours, issue 21: an
            always-normal model scores 0.500, so the operating point matters); the checkpoint stores it as
            ``normal_bias`` and evaluate/predict apply it. Off: the plain arg max (paper).
        device_aug: probability that a training cycle passes through a random stethoscope filter (tilt, low-pass,
            high-pass, resonance) applied to its cached features (:class:`lungcvt.device_aug.DeviceAugment`; ours,
            issue 21: robustness to a recording device absent from training). 0 = off.
        device_noise: probability that a training cycle gets a stationary noise floor 15-45 dB below its maximum
            (:func:`lungcvt.device_aug.add_noise_floor`; ours, issue 21: a quieter cycle or a noisier device). 0 = off.
        bias_views: with ``tune_normal_bias``, tune the stored bias on the validation cycles plus this many copies of
            them, each cycle through a random stethoscope filter (:func:`lungcvt.device_aug.with_device_views`,
            seeded with ``seed``), pooled (ours, issue 21: an operating point that holds on a device training did
            not see). The best epoch is still chosen on the validation cycles as recorded. 0 = them alone.
        min_normal_bias: with ``tune_normal_bias``, the lowest bias stored (``None``: no floor; 0: never shift the
            decision toward the abnormal classes beyond the class-balanced loss's own; ours, issue 21).
        select_on: the best epoch is the one with the highest validation ``"score"`` (ICBHI Score at the chosen
            bias; paper: the validation score) or ``"auroc"`` (abnormal-vs-normal AUROC of the validation cycles,
            threshold-free; ours, issue 21) or ``"last"`` (the last epoch: no selection; its bias is still tuned on
            validation).
        ensemble_training: with ``model.ensemble`` M > 1, ``"joint"`` trains the M members together on the same
            batches (one loss, one epoch selected for all); ``"independent"`` trains them one after the other as
            single models, member k with seed ``seed + 1000 k`` (its own init, batch order and augmentation) on the
            run's training/validation split, each with its own selected epoch, then tunes the ensemble's normal bias
            on the validation cycles (:mod:`lungcvt.members`; ours, issue 21).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    time_roll: bool = False
    batch_size: int = 32
    epochs: int = 100
    cb_beta: float = 0.999
    mixup: bool = True
    mixup_alpha: float = 2.0
    val_fraction: float = 0.2
    seed: int = 0
    bf16: bool = False
    subset_fraction: float = 1.0
    shuffle: bool = True
    lr_rule: str = "none"
    lr_base_batch: int = 32
    tune_normal_bias: bool = False
    device_aug: float = 0.0
    device_noise: float = 0.0
    bias_views: int = 0
    min_normal_bias: float | None = None
    select_on: str = "score"
    ensemble_training: str = "joint"

    def __post_init__(self) -> None:
        if self.ensemble_training not in ("joint", "independent"):
            raise ValueError(
                f"train.ensemble_training must be 'joint' or 'independent', got {self.ensemble_training!r}"
            )
        if not 0.0 <= self.device_aug <= 1.0:
            raise ValueError(f"train.device_aug must be a probability in [0, 1], got {self.device_aug}")
        if not 0.0 <= self.device_noise <= 1.0:
            raise ValueError(f"train.device_noise must be a probability in [0, 1], got {self.device_noise}")
        if self.select_on not in ("score", "auroc", "last"):
            raise ValueError(f"train.select_on must be 'score', 'auroc' or 'last', got {self.select_on!r}")
        if self.bias_views < 0:
            raise ValueError(f"train.bias_views must be >= 0, got {self.bias_views}")
        if not 0.0 < self.subset_fraction <= 1.0:
            raise ValueError(f"train.subset_fraction must be in (0, 1], got {self.subset_fraction}")
        if self.lr_rule not in ("none", "linear"):
            raise ValueError(f"train.lr_rule must be 'none' or 'linear', got {self.lr_rule!r}")
        if not 0.0 <= self.cb_beta < 1.0:
            raise ValueError(f"train.cb_beta must be in [0, 1), got {self.cb_beta}")
        if self.lr <= 0 or self.batch_size <= 0 or self.epochs <= 0:
            raise ValueError("train.lr, train.batch_size and train.epochs must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")


@dataclass(frozen=True)
class LungCVTConfig:
    """Full configuration: features, model, training."""

    name: str = "lungcvt_base"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.img_size != self.features.image_size:
            raise ValueError(
                f"model.img_size ({self.model.img_size}) must equal features.image_size ({self.features.image_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_from_dict(d: dict[str, Any]) -> LungCVTConfig:
    """Rebuild a :class:`LungCVTConfig` from ``asdict`` output (e.g. a checkpoint's metadata)."""
    valid = {f.name for f in dataclasses.fields(LungCVTConfig)}
    unknown = set(d) - valid
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(valid)}")
    return LungCVTConfig(
        name=d.get("name", "lungcvt_base"),
        features=FeatureConfig(**d.get("features", {})),
        model=ModelConfig(**d.get("model", {})),
        train=TrainConfig(**d.get("train", {})),
    )


_REGISTRY: Registry[LungCVTConfig] = Registry("config")


def register_config(cfg: LungCVTConfig) -> LungCVTConfig:
    """Register ``cfg`` under ``cfg.name``; registering a name twice raises ``ValueError``."""
    return _REGISTRY.register(cfg.name, cfg)


def list_configs() -> list[str]:
    """Names of the registered configs."""
    return _REGISTRY.names()


def get_config(name: str) -> LungCVTConfig:
    """Return the registered config ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    return _REGISTRY.get(name)


def with_overrides(cfg: LungCVTConfig, overrides: dict) -> LungCVTConfig:
    """Apply nested overrides (``{"train": {"lr": 1e-3}}``) through ``medshared.config.override_dataclass``."""
    from medshared.config import override_dataclass

    new = override_dataclass(cfg, overrides)
    return dataclasses.replace(new)  # re-run __post_init__ checks


# the presets (registered on import; kept in their own module)
from lungcvt import presets as _presets  # noqa: E402,F401
