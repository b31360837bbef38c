"""The paper's chain as library functions: stage 1 (detector + LSTM) gives each video a key frame and a nodule box,
stage 2 classifies the nodule-cropped clip around it. The CLI (``evaluate-keyframe``, ``train-classifier
--keyframes``, ``evaluate``, ``predict``) and the demo all call these.

One fallback everywhere: a video in which the detector finds no nodule in any frame gets the middle frame as its key
frame and the whole-frame crop (``source = "fallback_middle"``); every output that lists key frames says which
videos took it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kfgnet.clips import FALLBACK, KeyFrame, load_clip
from kfgnet.config import LABELS
from kfgnet.data import DataError, VideoRecord, read_video
from kfgnet.detector import FrameDetections, detect_frames, load_detector
from kfgnet.keyframe import build_sequences, load_keyframe, predict_keyframes

TOLERANCE_TABLE_D = tuple(range(9))  # D = 0..8 frames: the table of evaluate-keyframe (the curve goes to 32)

__all__ = [
    "TOLERANCE_TABLE_D",
    "tolerance_report",
    "Stage1",
    "KeyFramePrediction",
    "Pipeline",
    "extract_detections",
    "locate_keyframes",
    "write_keyframes_csv",
    "read_keyframes_csv",
    "file_digest",
]

log = logging.getLogger("kfgnet")


def file_digest(path: str | Path) -> str:
    """12 hex digits of the sha1 of a file's bytes (cache keys that change when a checkpoint is retrained)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def extract_detections(
    videos: list[Path],
    detector: torch.nn.Module,
    device: torch.device,
    cache_dir: Path | None = None,
    score_threshold: float = 0.05,
    tag: str = "",
    progress: bool = True,
    blackout: tuple[int, int, int, int] | None = None,
    precision: Any = None,
) -> list[FrameDetections]:
    """Detector outputs (top box + FC7 feature per frame) for each video, cached as ``.npz`` under ``cache_dir``
    keyed by video path, ``tag`` (the detector checkpoint's digest), threshold, blackout and (when not fp32) the
    precision the detector ran in."""
    prec = getattr(precision, "name", "fp32")
    out = []
    it: Any = videos
    if progress:
        from tqdm import tqdm

        it = tqdm(videos, desc="detect frames", unit="video", leave=False)
    for v in it:
        v = Path(v)
        cp = None
        if cache_dir is not None:
            key = f"{v.resolve()}|{tag}|{score_threshold}|{blackout}" + ("" if prec == "fp32" else f"|{prec}")
            h = hashlib.sha1(key.encode()).hexdigest()[:12]
            cp = Path(cache_dir) / f"{v.stem if v.suffix else v.name}-{h}.npz"
            if cp.is_file():
                out.append(FrameDetections.load(cp))
                continue
        d = detect_frames(
            detector, read_video(v, blackout=blackout), device, score_threshold=score_threshold, precision=precision
        )
        if cp is not None:
            d.save(cp)
        out.append(d)
    return out


@dataclass
class KeyFramePrediction:
    """Stage 1's answer for one video: key frame, nodule box (None for the fallback), detection score, where it
    came from (``"stage1"`` or ``"fallback_middle"``), the number of frames, and the per-entry score curve."""

    video: str
    key_frame: int
    box: tuple[float, float, float, float] | None
    score: float | None
    source: str
    num_frames: int
    curve_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    curve: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def as_keyframe(self) -> KeyFrame:
        return KeyFrame(self.key_frame, self.box, self.source)


class Stage1:
    """The loaded detector and key-frame model (``Stage1.load(detector_path, keyframe_path, device)``)."""

    def __init__(
        self,
        detector: torch.nn.Module,
        dcfg: Any,
        keyframe: torch.nn.Module,
        kcfg: Any,
        device: torch.device,
        tag: str = "",
        precision: Any = None,
    ):
        self.detector, self.dcfg, self.keyframe, self.kcfg, self.device, self.tag = (
            detector,
            dcfg,
            keyframe,
            kcfg,
            device,
            tag,
        )
        self.precision = precision  # the detector's (bf16: backbone autocast); the LSTM runs in fp32
        if kcfg.feature_dim != dcfg.representation:
            raise ValueError(
                f"the key-frame model expects {kcfg.feature_dim}-d detector features but the detector "
                f"gives {dcfg.representation}-d; use the detector it was trained on"
            )

    @classmethod
    def load(cls, detector_path: Path, keyframe_path: Path, device: torch.device, precision: Any = None) -> Stage1:
        det, dcfg = load_detector(detector_path, device)
        km, kcfg = load_keyframe(keyframe_path, device)
        return cls(det, dcfg, km, kcfg, device, file_digest(detector_path), precision)

    def locate(
        self,
        videos: list[Path],
        cache_dir: Path | None = None,
        progress: bool = True,
        blackout: tuple[int, int, int, int] | None = None,
        detections: list[FrameDetections] | None = None,
    ) -> list[KeyFramePrediction]:
        """Key frame + box per video (see :func:`locate_keyframes`)."""
        dets = (
            detections
            if detections is not None
            else extract_detections(
                videos,
                self.detector,
                self.device,
                cache_dir,
                self.dcfg.score_threshold,
                self.tag,
                progress,
                blackout,
                self.precision,
            )
        )
        return locate_keyframes(videos, dets, self.keyframe, self.kcfg, self.device)


def locate_keyframes(
    videos: list[Path], dets: list[FrameDetections], keyframe: torch.nn.Module, kcfg: Any, device: torch.device
) -> list[KeyFramePrediction]:
    """The LSTM's argmax frame and the detector's box there per video; the fallback (middle frame, no box) for a
    video without any detection, logged."""
    has = [len(d.frame_num) > 0 for d in dets]
    seqs = build_sequences([d for d, h in zip(dets, has) if h], None, kcfg)
    keys, curves = predict_keyframes(keyframe, seqs, device) if seqs else ([], [])
    out, j = [], 0
    fallback = []
    for v, d, h in zip(videos, dets, has):
        if not h:
            out.append(KeyFramePrediction(str(v), (d.num_frames - 1) // 2, None, None, FALLBACK, d.num_frames))
            fallback.append(Path(v).name)
            continue
        k = keys[j]
        e = int(np.flatnonzero(d.frame_num == k)[0])
        out.append(
            KeyFramePrediction(
                str(v),
                k,
                tuple(float(c) for c in d.boxes[e]),
                float(d.scores[e]),
                "stage1",
                d.num_frames,
                seqs[j]["frame_num"],
                curves[j],
            )
        )
        j += 1
    if fallback:
        log.warning(
            "no nodule detected in any frame of %d video(s): middle frame + whole-frame crop (%s): %s",
            len(fallback),
            FALLBACK,
            ", ".join(fallback[:10]) + (" ..." if len(fallback) > 10 else ""),
        )
    return out


def tolerance_report(preds: list[Any], records: list[Any]) -> dict[str, Any]:
    """Tolerance accuracy D = 0..32 of stage 1 and of always the middle frame, over videos with a key frame."""
    from kfgnet.evaluate import tolerance_curve

    have = [(p, r) for p, r in zip(preds, records) if r.key_frame is not None]
    if not have:
        return {}
    true = [r.key_frame for _, r in have]
    tol = tolerance_curve([p.key_frame for p, _ in have], true)
    mid = tolerance_curve([(p.num_frames - 1) // 2 for p, _ in have], true)
    return {
        "n_videos": len(have),
        "n_fallback": sum(p.source != "stage1" for p, _ in have),
        "tolerance_accuracy": tol.tolist(),
        "middle_frame_tolerance": mid.tolist(),
        "table": {f"D={d}": {"stage1": float(tol[d]), "middle_frame": float(mid[d])} for d in TOLERANCE_TABLE_D},
    }


_CSV_FIELDS = ["video", "key_frame", "x1", "y1", "x2", "y2", "score", "source", "num_frames"]


def write_keyframes_csv(preds: list[KeyFramePrediction], path: Path, extra: list[dict[str, Any]] | None = None) -> None:
    """``keyframes.csv``: one row per video (video, key_frame, box x1..y2 (empty for the fallback), score, source,
    num_frames, plus ``extra`` columns), the input of ``train-classifier --keyframes``."""
    from medshared.runtime import atomic_write_csv

    rows = []
    for i, p in enumerate(preds):
        b = p.box or ("", "", "", "")
        rows.append(
            {
                "video": p.video,
                "key_frame": p.key_frame,
                "x1": b[0],
                "y1": b[1],
                "x2": b[2],
                "y2": b[3],
                "score": "" if p.score is None else p.score,
                "source": p.source,
                "num_frames": p.num_frames,
                **(extra[i] if extra else {}),
            }
        )
    atomic_write_csv(path, rows)


def read_keyframes_csv(path: Path, records: list[VideoRecord]) -> list[KeyFrame]:
    """Key frames and boxes of ``records`` from a ``keyframes.csv`` (matched by resolved path, else by file name).

    Raises:
        DataError: a missing file or column, or a video of the manifest without a row.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"key-frame file {p} not found; write it with 'kfgnet evaluate-keyframe ... --out DIR' (DIR/keyframes.csv)"
        )
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or any(c not in rows[0] for c in ("video", "key_frame")):
        raise DataError(f"{p} is not a keyframes.csv (columns video, key_frame, x1, y1, x2, y2, source expected)")
    by_path = {str(Path(r["video"]).resolve()): r for r in rows}
    by_name = {Path(r["video"]).name: r for r in rows}
    keys, missing = [], []
    for rec in records:
        r = by_path.get(str(rec.path.resolve())) or by_name.get(rec.path.name)
        if r is None:
            missing.append(rec.path.name)
            continue
        box = None
        if r.get("x1") not in (None, ""):
            box = tuple(float(r[c]) for c in ("x1", "y1", "x2", "y2"))
        keys.append(KeyFrame(int(r["key_frame"]), box, r.get("source") or "stage1"))
    if missing:
        raise DataError(
            f"{len(missing)} video(s) of the manifest have no row in {p}: {', '.join(missing[:5])}; "
            f"run evaluate-keyframe on the same manifest"
        )
    return keys


class Pipeline:
    """Both stages loaded: :meth:`predict_video` gives key frame, box and P(malignant) for one video."""

    def __init__(
        self, stage1: Stage1, classifier: torch.nn.Module, ccfg: Any, clip: Any, motion: Any, precision: Any = None
    ):
        self.stage1, self.classifier, self.ccfg, self.clip, self.motion = stage1, classifier, ccfg, clip, motion
        self.precision = precision  # the classifier's (bf16: autocast over its forward); None: fp32

    @classmethod
    def load(
        cls,
        classifier_path: Path,
        detector_path: Path,
        keyframe_path: Path,
        device: torch.device,
        precision: Any = None,
        detector_precision: Any = None,
    ) -> Pipeline:
        from kfgnet.train import load_classifier

        cls_model, ccfg, clip, motion = load_classifier(classifier_path, device)
        stage1 = Stage1.load(detector_path, keyframe_path, device, detector_precision)
        return cls(stage1, cls_model, ccfg, clip, motion, precision)

    @torch.no_grad()
    def predict_video(self, video: str | Path, allow_pad: bool = True, cache_dir: Path | None = None) -> dict[str, Any]:
        """Stage 1 then stage 2 on one video (file, frame folder or DICOM cine).

        Returns:
            ``{"video", "key_frame", "box", "key_source", "detection_score", "p_malignant", "prediction",
            "num_frames", "curve_frames", "curve", "frame"}`` (``frame``: the key frame as an RGB array, for plots).
        """
        video = Path(video)
        frames = read_video(video, blackout=self.clip.blackout)
        det = detect_frames(
            self.stage1.detector,
            frames,
            self.stage1.device,
            score_threshold=self.stage1.dcfg.score_threshold,
            precision=self.stage1.precision,
        )
        kp = locate_keyframes([video], [det], self.stage1.keyframe, self.stage1.kcfg, self.stage1.device)[0]
        rec = VideoRecord(video, video.name, 0, kp.key_frame)
        clip, _, _ = load_clip(
            rec, kp.as_keyframe(), self.clip, self.ccfg.attention_steps, self.motion, allow_pad, frames=frames
        )
        x = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(255.0)[None]  # (1, 3, T, S, S)
        with self.precision.autocast() if self.precision is not None else contextlib.nullcontext():
            logits, _ = self.classifier(x.to(self.stage1.device))
        p = float(torch.softmax(logits.float(), 1)[0, 1])
        return {
            "video": str(video),
            "key_frame": kp.key_frame,
            "box": list(kp.box) if kp.box else None,
            "key_source": kp.source,
            "detection_score": kp.score,
            "p_malignant": p,
            "prediction": LABELS[int(p >= 0.5)],
            "num_frames": kp.num_frames,
            "curve_frames": kp.curve_frames,
            "curve": kp.curve,
            "frame": frames[kp.key_frame],
        }
