"""Configuration of ALGES (Aklilu & Yeung, "ALGES", MLHC 2022, PMLR 182).

One frozen dataclass holds the model, training, active-learning and embedding settings. Every default is the paper's
(or, where the paper is silent, the official code's ``josaklil-ai/surg-active-learning`` @ 534f45d) and is cited in a
trailing comment. Registered variants: ``alges_paper`` (the defaults), ``alges_demo`` (small images, few epochs, used by
``alges demo``) and ``alges_tiny`` (for tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from medshared.registry import Registry

__all__ = [
    "CLASS_NAMES",
    "GREY_TO_ID",
    "OFFICIAL_DICE_CLASSES",
    "IGNORE_INDEX",
    "AlgesConfig",
    "create_config",
    "register_config",
    "list_configs",
    "config_from_dict",
    "adapt_to_classes",
]

IGNORE_INDEX = 255

# CholecSeg8k watershed-mask grey value -> class id (brief section 5, cross-checked in two independent loaders).
GREY_TO_ID: dict[int, int] = {
    50: 0,
    11: 1,
    21: 2,
    13: 3,
    12: 4,
    31: 5,
    23: 6,
    24: 7,
    25: 8,
    32: 9,
    22: 10,
    33: 11,
    5: 12,
}
CLASS_NAMES: tuple[str, ...] = (
    "black_background",
    "abdominal_wall",
    "liver",
    "gastrointestinal_tract",
    "fat",
    "grasper",
    "connective_tissue",
    "blood",
    "cystic_duct",
    "l_hook_electrocautery",
    "gallbladder",
    "hepatic_vein",
    "liver_ligament",
)
# official code keeps these classes ("present in val") for its per-image smoothed Dice (brief section 6)
OFFICIAL_DICE_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 9, 10)


@dataclass(frozen=True)
class AlgesConfig:
    """All settings of one ALGES experiment (model, training, acquisition).

    Images are fed to the model as float pixel values in [0, 255] (``input_norm="raw"``, as the official code).
    """

    # --- model (paper section 4.1: "U-Net with a ResNet-18 backbone", 13 output classes) ---
    encoder_name: str = "resnet18"  # paper 4.1
    encoder_weights: str | None = None  # official: torchvision resnet18(pretrained=False); "imagenet" or a file path
    encoder_depth: int = 5  # smp default
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)  # smp default; d = decoder_channels[-1] = 16
    num_classes: int = 13  # paper 4: 13 CholecSeg8k classes
    head_kernel_size: int = 1  # paper 3.1.2: last layer is a 1x1 conv (smp's default head is 3x3; option 3)
    input_norm: str = "raw"  # official: raw 0-255 floats; "unit" (/255) or "imagenet"; pretrained: always imagenet
    image_size: int = 224  # paper 4: frames resized to 224x224
    # --- training (paper 4.1) ---
    epochs: int = 50  # paper 4.1: 50 epochs per round
    lr: float = 5e-5  # paper 4.1: Adam, lr 5e-5, betas (0.9, 0.999)
    batch_size: int = 32  # official code: batch 32, shuffled
    weight_decay: float = 0.0  # official: none
    dice_loss_weight: float = 0.0  # official: CE only (the Dice term is computed but not returned)
    train_steps: int = 0  # 0: ``epochs`` epochs per round (paper); > 0: exactly this many optimiser steps instead
    # --- active learning (paper 4.1 / Algorithm 1) ---
    n_init: int = 10  # paper 4.1: initial batch of 10 images
    n_query: int = 10  # paper 4.1: 10 images per round
    n_rounds: int = 30  # paper 4.1: 30 iterations of AL
    seeds: tuple[int, ...] = (0, 1, 2)  # paper 4.1: mean of 3 experiments (official seeds 3507+e)
    retrain_from_init: bool = True  # official: each round deep-copies the initial model
    # --- gradient embeddings (paper Eq. 4 / Eq. 6) ---
    img_variant: str = "flat"  # Eq. 4: K*d mean gradient; "row_norm" = official ALGESv1 (per-class L2 norms)
    sem_variant: str = "norm"  # Eq. 6: sum of ||p - e|| ||z||; "squared" or "official" (ALGESv2's K-term formula)
    include_bias: bool = False  # both official variants exclude the bias gradient
    kmeans_preset: str = "badge"  # "badge": max-norm first + D^2 sampling; "official": sklearn greedy, seed 0
    # --- baselines ---
    coreset_grid: int = 7  # official: avg_pool2d(., 32) of a 224 map = 7x7 grid of the last feature map
    deal_attention_size: int = 56  # DEAL / official: 56x56 probability attention
    deal_hard_levels: int = 10  # official ALGES DEAL: 10-bin histogram entropy
    deal_loss_weight: float = 1.0  # DEAL: CE + BCE(difficulty, error mask)
    deal_pool_fraction: float = 0.5  # original DEAL scores a random 50 % of the unlabelled pool (sub_ratio=0.5)
    # --- data ---
    empty_masks: str = "keep"  # keep: an empty mask is an all-background label; drop: leave such images out (logged)
    case_pattern: str = ""  # regex with one group giving an image's case/patient from its file name (splits)
    val_fraction: float = 0.0  # `alges train`: hold out this fraction of cases for best-checkpoint selection
    test_fraction: float = 0.25  # `alges simulate` on a folder without lists: case-disjoint test fraction
    # --- evaluation ---
    dice_classes: tuple[int, ...] = ()  # scored classes; () = the dataset's (CholecSeg8k: the official 8 classes)
    eval_batch_size: int = 32
    amp: bool = False  # bf16 autocast for pool inference: off, bf16 changed the picks (README "bf16 selection")
    channels_last: bool = True
    name: str = field(default="alges_paper", compare=False)

    @property
    def scored_classes(self) -> tuple[int, ...]:
        """``dice_classes``, else the foreground of a two-class problem, else every class."""
        if self.dice_classes:
            return tuple(self.dice_classes)
        return (1,) if self.num_classes == 2 else tuple(range(self.num_classes))

    @property
    def effective_input_norm(self) -> str:
        """``input_norm`` for a randomly initialised encoder; "imagenet" whenever pretrained encoder weights are set
        (their normalisation follows the weights)."""
        w = self.encoder_weights
        return "imagenet" if w is not None and str(w).lower() not in ("", "none") else self.input_norm

    def __post_init__(self) -> None:
        if self.head_kernel_size not in (1, 3):
            raise ValueError(f"head_kernel_size must be 1 or 3, got {self.head_kernel_size}")
        if self.input_norm not in ("raw", "unit", "imagenet"):
            raise ValueError(f"input_norm must be raw|unit|imagenet, got {self.input_norm!r}")
        if self.img_variant not in ("flat", "row_norm"):
            raise ValueError(f"img_variant must be flat|row_norm, got {self.img_variant!r}")
        if self.sem_variant not in ("norm", "squared", "official"):
            raise ValueError(f"sem_variant must be norm|squared|official, got {self.sem_variant!r}")
        if self.kmeans_preset not in ("badge", "official"):
            raise ValueError(f"kmeans_preset must be badge|official, got {self.kmeans_preset!r}")
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels has {len(self.decoder_channels)} entries but encoder_depth is {self.encoder_depth}; "
                "give one decoder channel count per encoder stage"
            )
        if self.image_size % (2**self.encoder_depth):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**encoder_depth = {2**self.encoder_depth}"
            )
        if self.empty_masks not in ("keep", "drop", "error"):
            raise ValueError(f"empty_masks must be keep|drop|error, got {self.empty_masks!r}")
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in [0, 1) and test_fraction in (0, 1), got {self.val_fraction}, "
                f"{self.test_fraction}"
            )
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0, got {self.train_steps}")
        if not 0.0 < self.deal_pool_fraction <= 1.0:
            raise ValueError(f"deal_pool_fraction must be in (0, 1], got {self.deal_pool_fraction}")
        for c in self.dice_classes:
            if not 0 <= c < self.num_classes:
                raise ValueError(f"dice_classes contains {c}, outside 0..{self.num_classes - 1}")

    @property
    def feature_dim(self) -> int:
        """d, the channel count of the penultimate activation z (the decoder output)."""
        return self.decoder_channels[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return asdict(self)


def adapt_to_classes(
    cfg: AlgesConfig, class_map: Any, explicit: set[str] | frozenset[str] = frozenset()
) -> AlgesConfig:
    """``num_classes`` and ``dice_classes`` from the dataset's class map (``alges.masks.ClassMap``), unless the user
    set them (``explicit`` names the keys given in ``--config`` or on the command line); an explicit ``num_classes``
    that disagrees with the data is an error."""
    k = class_map.num_classes
    if "num_classes" in explicit and cfg.num_classes != k:
        raise ValueError(
            f"num_classes is {cfg.num_classes} in your config but the dataset has {k} classes "
            f"({', '.join(class_map.names)}; from {class_map.source}); drop num_classes or fix the class map"
        )
    dice = cfg.dice_classes if "dice_classes" in explicit else tuple(class_map.scored_classes)
    return dataclasses.replace(cfg, num_classes=k, dice_classes=dice)


def config_from_dict(d: dict[str, Any]) -> AlgesConfig:
    """Rebuild a config from :meth:`AlgesConfig.to_dict` output (lists become tuples; unknown keys raise)."""
    valid = {f.name: f for f in dataclasses.fields(AlgesConfig)}
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(valid)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return AlgesConfig(**kw)


_REGISTRY: Registry[AlgesConfig] = Registry("config")


def register_config(cfg: AlgesConfig) -> AlgesConfig:
    """Register a named config; registering a name twice raises ``ValueError``."""
    return _REGISTRY.register(cfg.name, cfg)


def list_configs() -> list[str]:
    """Names of the registered configs."""
    return _REGISTRY.names()


def create_config(name: str = "alges_paper", **overrides: Any) -> AlgesConfig:
    """Return the registered config ``name`` with keyword overrides applied."""
    return dataclasses.replace(_REGISTRY.get(name), **overrides)


register_config(AlgesConfig())
register_config(
    AlgesConfig(
        name="alges_demo",
        image_size=64,
        encoder_depth=4,
        decoder_channels=(128, 64, 32, 16),
        epochs=8,
        lr=1e-3,  # paper 5e-5 is for 50 epochs at 224 px; the demo trains 8 epochs on 64 px images
        batch_size=4,  # paper 32; with 10-40 labeled images a batch of 4 gives enough optimiser steps
        input_norm="unit",
        n_init=10,
        n_query=10,
        n_rounds=4,
        seeds=(0,),
        coreset_grid=4,
        deal_attention_size=16,
    )
)
register_config(
    AlgesConfig(
        name="alges_tiny",
        image_size=32,
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
        epochs=1,
        lr=1e-3,
        batch_size=8,
        input_norm="unit",
        n_init=4,
        n_query=3,
        n_rounds=2,
        seeds=(0,),
        coreset_grid=2,
        deal_attention_size=8,
        eval_batch_size=8,
    )
)
# DDTI thyroid-nodule ultrasound (../shared/data/ddti): 300x300 grey crops centred on the nodule, binary 0/255 masks,
# names "<case>_<image>(<nodule>)". U-Net R18 from scratch; the paper's 5e-5 x 50 epochs is out of a 10-minute CPU
# budget, so Adam lr 1e-3, batch 8. Six masks are empty although the images show a nodule (missing annotations):
# empty_masks="drop" leaves them out, logged. Best checkpoint on a case-disjoint 15 % validation split.
register_config(
    AlgesConfig(
        name="alges_ddti",
        image_size=128,
        epochs=12,
        lr=1e-3,  # paper 5e-5 (50 epochs at 224 px); here 12 epochs must reach a useful model
        batch_size=8,
        input_norm="unit",
        num_classes=2,
        n_init=10,
        n_query=10,
        n_rounds=6,
        coreset_grid=4,
        deal_attention_size=32,
        empty_masks="drop",
        case_pattern=r"^(\d+)_",
        val_fraction=0.15,
        amp=False,  # fp32: see the README's bf16 measurement
        eval_batch_size=16,
    )
)
# The real AL study on DDTI (README "Real data: active learning on DDTI"): the DDTI recipe at 64 px with 80
# optimiser steps per round, so 7 strategies x 3 seeds x 6 rounds fit about 90 minutes of one CPU thread.
register_config(
    dataclasses.replace(
        create_config("alges_ddti"),
        name="alges_ddti_study",
        image_size=64,
        epochs=50,
        train_steps=80,
        seeds=(0, 1, 2),
        deal_attention_size=16,
        val_fraction=0.0,
        test_fraction=0.25,
        eval_batch_size=32,
    )
)
