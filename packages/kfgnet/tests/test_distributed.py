"""DDP on CPU (gloo, ``medshared.distributed.run_local``): 2 processes with half the batch each reach the weights of
1 process with the whole batch after K steps, for the key-frame LSTM and the classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from kfgnet.config import (
    ClassifierTrainConfig,
    ClipConfig,
    KeyFrameTrainConfig,
    get_classifier_config,
    get_keyframe_config,
)
from kfgnet.data import ClipDataset, read_manifest
from kfgnet.keyframe import train_keyframe
from kfgnet.train import train_classifier
from medshared.distributed import DistContext, run_local

TOL = 2e-5  # float32 sums in another order (gloo all-reduce vs one batch)


def _sequences(n: int = 6, d: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        length = 5 + 2 * i  # different lengths: the loss is normalised by the global count of entries
        lab = rng.random(length).astype(np.float32)
        out.append(
            {
                "feat": rng.standard_normal((length, d)).astype(np.float32),
                "geo": rng.random((length, 5)).astype(np.float32),
                "label": lab,
                "frame_num": np.arange(length),
                "key": np.asarray(int(lab.argmax())),
            }
        )
    return out


KCFG = get_keyframe_config("kfgnet_keyframe_tiny", feature_dim=8, geo_dim=5)
KTCFG = KeyFrameTrainConfig(epochs=3, batch_size=6, lr=0.01, seed=0, grad_clip=0.0)


def _keyframe_rank(ctx: DistContext) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in train_keyframe(_sequences(), KCFG, KTCFG, ctx, progress=False).state_dict().items()
    }


def test_keyframe_lstm_ddp_equals_one_process() -> None:
    one = train_keyframe(_sequences(), KCFG, KTCFG, "cpu", progress=False).state_dict()
    two = run_local(_keyframe_rank, 2)
    for k, v in one.items():
        torch.testing.assert_close(two[0][k], v, rtol=0, atol=TOL, msg=k)
        torch.testing.assert_close(two[1][k], v, rtol=0, atol=TOL, msg=k)
    assert not torch.equal(
        one["head.2.weight"],
        train_keyframe(_sequences(), KCFG, KeyFrameTrainConfig(epochs=0), "cpu", progress=False).state_dict()[
            "head.2.weight"
        ],
    )  # it did train


CFG = get_classifier_config("kfgnet_tiny", size=32, dropout=0.0)
# K = 4 steps of the whole 4-clip dataset (1 process x 4 clips vs 2 processes x 2 clips)
TCFG = ClassifierTrainConfig(epochs=3, epochs2=1, batch_size=4, seed=0, flip_prob=0.0, intensity_prob=0.0)


def _clip_dataset(manifest: Path) -> ClipDataset:
    """The same clip 4 times, one labelled malignant: BatchNorm statistics of any half batch equal those of the
    whole batch, so DDP must match one process (with distinct clips per-rank BatchNorm differs by design). Labels are
    unbalanced so that the gradients are large: Adam turns float-level noise in near-zero gradients into lr-sized
    steps."""
    r = read_manifest(manifest)[0]
    recs = [type(r)(r.path, f"p{i}", int(i == 0), r.key_frame, r.boxes) for i in range(4)]
    return ClipDataset(recs, ClipConfig(num_frames=16, size=32), CFG.attention_steps, augment=False)


def _classifier_rank(ctx: DistContext, manifest: Path) -> dict[str, torch.Tensor]:
    m = train_classifier(_clip_dataset(manifest), CFG, TCFG, ctx, progress=False)
    return {k: v.clone() for k, v in m.state_dict().items()}


def _inert(name: str) -> bool:
    """A conv bias right before BatchNorm has zero gradient (BN subtracts it again): Adam turns its float noise into
    lr-sized steps, which then shift BN's running statistics (and the unbiased running variance uses each rank's own
    element count). Neither changes the trained network's output; they are left out of the comparison."""
    return (name.startswith("conv") and name.endswith(".0.bias")) or "running_" in name


def test_classifier_ddp_equals_one_process(synth: Path) -> None:
    one = train_classifier(_clip_dataset(synth), CFG, TCFG, "cpu", progress=False).state_dict()
    two = run_local(_classifier_rank, 2, synth)
    checked = 0
    for k, v in one.items():
        if v.dtype.is_floating_point and not _inert(k):
            torch.testing.assert_close(two[0][k], v, rtol=0, atol=TOL, msg=k)
            torch.testing.assert_close(two[1][k], v, rtol=0, atol=TOL, msg=k)
            checked += 1
    assert checked >= 20  # every conv weight, BN affine, attention and fc parameter
