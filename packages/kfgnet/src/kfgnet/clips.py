"""Clips of the classifier: which frames (key-frame centred or uniform), the nodule crop around the key frame's box,
the short-video policy, and the dataset of clips with their motion index.

A :class:`KeyFrame` says where a clip is centred and cropped: from the manifest's annotation, from stage 1
(``keyframes.csv``), or the one fallback when stage 1 found no nodule (middle frame, whole-frame crop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kfgnet.config import ClipConfig, MotionConfig
from kfgnet.features import motion_vector
from kfgnet.video_io import DataError, read_video

__all__ = [
    "FALLBACK",
    "KeyFrame",
    "record_keyframe",
    "clip_indices",
    "cut_clip",
    "check_clip_length",
    "ClipDataset",
    "load_clip",
]

log = logging.getLogger("kfgnet")


def clip_indices(num_frames: int, key_frame: int | None, clip: ClipConfig) -> tuple[np.ndarray, int]:
    """Frame indices of a clip and the key frame's position in it.

    ``keyframe``: T consecutive frames with the key at ``T // 2`` when interior, the window shifted to fit at the
    ends, short videos repeat-padded with the edge frames [I, brief §7]. ``uniform``: T frames spread evenly.

    Returns:
        (``(T,)`` int indices into the video, position of the key frame in the clip or -1).
    """
    t = clip.num_frames
    if num_frames < 1:
        raise DataError("video has no frames")
    if clip.sampling == "uniform":
        idx = np.linspace(0, num_frames - 1, t).round().astype(int)
        pos = int(np.argmin(np.abs(idx - key_frame))) if key_frame is not None else -1
        return idx, pos
    if key_frame is None or not 0 <= key_frame < num_frames:
        raise DataError(f"key frame {key_frame} is outside the video (0..{num_frames - 1})")
    kp = t // 2 if clip.key_position is None else clip.key_position
    if num_frames >= t:
        start = min(max(0, key_frame - kp), num_frames - t)  # shift to fit at the ends
        idx = np.arange(start, start + t)
        return idx, int(key_frame - start)
    idx = np.clip(np.arange(key_frame - kp, key_frame - kp + t), 0, num_frames - 1)  # repeat-pad the edge frames
    return idx, kp


FALLBACK = "fallback_middle"  # source of a key frame when stage 1 detected no nodule anywhere in the video


@dataclass(frozen=True)
class KeyFrame:
    """Where a clip is centred and cropped.

    Attributes:
        frame: key frame index (None with uniform sampling and no key frame).
        box: nodule box (x1, y1, x2, y2 pixels) for ``crop: nodule``; None when there is none.
        source: ``"annotation"`` (the manifest), ``"stage1"`` (detector + LSTM) or ``"fallback_middle"`` (stage 1
            found no nodule in any frame: the middle frame and the whole-frame crop, the one fallback used by every
            command and stated in its outputs).
    """

    frame: int | None
    box: tuple[float, float, float, float] | None = None
    source: str = "annotation"


def record_keyframe(r: Any, clip: ClipConfig) -> KeyFrame:
    """The annotated key frame of ``r`` and its nodule box: the box on the key frame, else the box of the annotated
    frame nearest to it (the middle of the video when there is no key frame).

    Raises:
        DataError: ``crop: nodule`` and the video has no box at all, or key-frame sampling without a key frame.
    """
    if r.key_frame is None and clip.sampling == "keyframe":
        raise DataError(f"video {r.path} has no key_frame; key-frame sampling needs one (or use uniform sampling)")
    box = None
    if r.boxes:
        ref = r.key_frame if r.key_frame is not None else (r.num_frames or 0) // 2
        k = min(r.boxes, key=lambda f: (abs(f - ref), f))
        box = tuple(float(v) for v in r.boxes[k])
    elif clip.crop == "nodule":
        raise DataError(
            f"video {r.path} has no nodule box for the nodule crop; add 'boxes' on its key frame to the "
            f"manifest, or crop whole frames with clip.crop: frame"
        )
    return KeyFrame(r.key_frame, box, "annotation")


def cut_clip(frames: np.ndarray, idx: np.ndarray, size: int, box: Any = None, margin: float = 0.25) -> np.ndarray:
    """Select ``idx`` and make every frame ``size x size``: the nodule crop (a square around ``box`` with ``margin``,
    the same for all frames, zero-padded at the border, then resized) or, with ``box=None``, the whole frame resized
    (cubic, as the official loader [V]).

    Args:
        frames: ``(N, H, W, 3)`` uint8 RGB; idx: ``(T,)`` frame indices; box: x1, y1, x2, y2 pixels or None.

    Returns:
        ``(T, size, size, 3)`` uint8.
    """
    from kfgnet.crop import crop_square, resize_frames, square_around_box

    sel = frames[idx]
    if box is not None:
        sel = crop_square(sel, square_around_box(box, margin))
    return resize_frames(sel, size)


def check_clip_length(num_frames: int, clip: ClipConfig, allow_pad: bool, where: str) -> bool:
    """Short-video policy: below ``clip.min_frames`` refused; below ``clip.num_frames`` refused without
    ``allow_pad``, else True (the caller pads and warns)."""
    if num_frames < clip.min_frames:
        raise DataError(
            f"{where} has {num_frames} frame(s), fewer than clip.min_frames = {clip.min_frames}; it is "
            f"too short to classify (lower clip.min_frames only if a clip mostly of repeated frames is "
            f"acceptable)"
        )
    if num_frames < clip.num_frames:
        if not allow_pad:
            raise DataError(
                f"{where} has {num_frames} frames, shorter than the {clip.num_frames}-frame clip; use a "
                f"shorter clip (clip.num_frames) or allow repeat padding (drop --no-pad-short)"
            )
        return True
    return False


class ClipDataset(Dataset):
    """Clips of the classifier with their V_motion, all decoded once and cached in memory.

    V_motion is computed once per clip at construction (never per batch) and flipped with any temporal flip.
    Augmentation draws from torch's RNG, which DataLoader seeds per worker and per epoch.

    Args:
        records: videos; clip: clip settings; steps: V_temp length (``ClassifierConfig.attention_steps``).
        motion: motion-index settings; augment: training augmentation (flips of T/H/W with ``flip_prob``,
            intensity shift with ``intensity_prob``) [V loader]; keys: per record the key frame and box to use
            (e.g. stage-1 predictions; default: the annotation); allow_pad: repeat-pad videos shorter than the clip
            (at least ``clip.min_frames`` long), with a warning.

    Items: ``(clip (3, T, S, S) float 0..1, label int64, v_motion (steps,) float32)``.
    """

    def __init__(
        self,
        records: list[Any],
        clip: ClipConfig,
        steps: int,
        motion: MotionConfig | None = None,
        augment: bool = False,
        flip_prob: float = 0.5,
        intensity_prob: float = 0.5,
        keys: list[KeyFrame] | None = None,
        allow_pad: bool = True,
        cache: dict[str, Any] | None = None,
        progress: bool = False,
    ):
        self.records, self.clip, self.steps = records, clip, steps
        self.motion = motion or MotionConfig()
        self.augment, self.flip_prob, self.intensity_prob = augment, flip_prob, intensity_prob
        if keys is not None and len(keys) != len(records):
            raise ValueError(f"{len(keys)} key frames for {len(records)} videos")
        self.keys = keys if keys is not None else [record_keyframe(r, clip) for r in records]
        self.clips: list[np.ndarray] = []
        self.v_motion: list[np.ndarray] = []
        self.padded: list[str] = []
        cache = {} if cache is None else cache
        it: Any = list(enumerate(records))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="clips + motion index", unit="video", leave=False)
        for i, r in it:
            c, vm, padded = load_clip(r, self.keys[i], clip, steps, self.motion, allow_pad, cache)
            if padded:
                self.padded.append(r.name)
            self.clips.append(c)
            self.v_motion.append(vm)
        if self.padded:
            log.warning(
                "%d video(s) shorter than the %d-frame clip repeat-padded with their edge frames: %s",
                len(self.padded),
                clip.num_frames,
                ", ".join(self.padded[:10]) + (" ..." if len(self.padded) > 10 else ""),
            )
        self.labels = np.array([r.label for r in records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.clips[i]).permute(3, 0, 1, 2).float().div_(255.0)  # (T,S,S,3) -> (3, T, S, S)
        vm = torch.from_numpy(self.v_motion[i].copy())
        if self.augment:
            # torch's RNG: DataLoader seeds it per worker and per epoch (a generator made in __init__ would repeat in
            # every worker), and training re-seeds it per epoch, so a resumed run draws what an uninterrupted one did
            u = torch.rand(6).tolist()
            if u[0] < self.flip_prob:  # temporal flip: V_motion flips with it
                x, vm = x.flip(1), vm.flip(0)
            if u[1] < self.flip_prob:
                x = x.flip(2)
            if u[2] < self.flip_prob:
                x = x.flip(3)
            if u[3] < self.intensity_prob:
                x = (x * (0.9 + 0.2 * u[4]) + (0.2 * u[5] - 0.1)).clamp_(0, 1)
        return x, torch.tensor(self.labels[i]), vm


def load_clip(
    r: Any,
    key: KeyFrame,
    clip: ClipConfig,
    steps: int,
    motion: MotionConfig,
    allow_pad: bool,
    cache: dict[str, Any] | None = None,
    frames: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One clip ``(T, S, S, 3)`` uint8, its V_motion ``(steps,)`` and whether it was padded (see
    :class:`ClipDataset`); ``frames`` skips reading the video again."""
    box = key.box if clip.crop == "nodule" else None
    if clip.crop == "nodule" and box is None and key.source != FALLBACK:
        raise DataError(
            f"no nodule box for the clip of {r.path} (key frame {key.frame}, from {key.source}); give "
            f"boxes, or crop whole frames with clip.crop: frame"
        )
    ck = f"{r.path}|{key}|{clip}|{motion}|{steps}"
    if cache is not None and ck in cache:
        return cache[ck]
    if frames is None:
        frames = read_video(r.path, blackout=clip.blackout)
    n = len(frames)
    padded = check_clip_length(n, clip, allow_pad, str(r.path))
    if clip.sampling == "keyframe" and not 0 <= (key.frame if key.frame is not None else -1) < n:
        raise DataError(f"key frame {key.frame} of {r.path} is beyond the video ({n} frames)")
    idx, _ = clip_indices(n, key.frame, clip)
    c = cut_clip(frames, idx, clip.size, box, clip.crop_margin)  # (T, S, S, 3)
    out = (c, motion_vector(c, steps, motion), padded)
    if cache is not None:
        cache[ck] = out
    return out
