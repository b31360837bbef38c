"""Synthetic *raw* recordings of an operation, as a user has them before ``pocapnet ingest``.

One operation of ``seconds`` seconds (the phase schedule and signatures of :mod:`pocapnet.synthetic`), written as:

- ``headsets.wav``: a stereo file, physician left, assistant right, at 44.1 kHz (the monitor capture's audio);
- ``gopro.wav``: the ambient microphone at 48 kHz, hearing both speakers (cross-talk) plus its own sounds, and
  starting ``ambient_lag_s`` earlier than the headsets (its content comes that much later);
- the X-ray monitor as a screen recording (``screen.avi``, MJPEG at ``video_fps``, the X-ray image inside a
  desktop frame) or a multi-frame DICOM (``xray.dcm``, ``1/dicom_fps`` s per frame); a 16 x 16 patch in the
  screen's top-left corner has the grey level ``(8 * t) mod 256`` during audio second ``t`` (video: every frame of
  second ``t``; DICOM: every frame), so a test can read which second a sampled frame came from;
- ``annotations.json`` in the corpus format, with the wearers (``Dr Phys``, ``Dr Assist``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pocapnet.synthetic import label_ranges, make_schedule, synth_audio, synth_frame

__all__ = ["make_raw_operation", "second_code"]


def second_code(t: int) -> int:
    """The grey level of the marker patch in second ``t``."""
    return (8 * t) % 256


def _screen(xray: np.ndarray, t: int, size: int) -> np.ndarray:
    """The X-ray image inside a blue desktop frame (RGB), marker patch top-left."""
    h = size + 48
    img = np.zeros((h, h, 3), np.uint8)
    img[..., 2] = 120  # desktop blue
    img[24 : 24 + size, 24 : 24 + size] = xray[..., None]
    img[:16, :16] = second_code(t)
    return img


def make_raw_operation(
    out: str | Path,
    seconds: int = 20,
    seed: int = 0,
    xray: str = "video",
    video_fps: int = 5,
    dicom_fps: float = 2.0,
    ambient_lag_s: float = 0.25,
    frame_size: int = 64,
    op: str = "OP_901",
) -> dict[str, Path]:
    """Write the raw files of one synthetic operation into ``out``; returns their paths (``labels`` is the schedule
    as ``.npy``, for checks)."""
    import soundfile as sf

    from pocapnet.data import resample

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y = make_schedule(rng, seconds)
    audio = synth_audio(rng, y, 16000)  # (3, T*16000): physician, assistant, ambient
    heads = resample(audio[:2], 16000, 44100)
    sf.write(out / "headsets.wav", heads.T, 44100, subtype="PCM_16")
    amb = 0.6 * audio[2] + 0.3 * (audio[0] + audio[1])  # the room hears both speakers
    amb = np.concatenate([np.zeros(int(round(ambient_lag_s * 16000)), np.float32), amb])
    sf.write(out / "gopro.wav", np.clip(resample(amb, 16000, 48000), -1, 1), 48000, subtype="PCM_16")
    frames = [synth_frame(rng, int(y[t]), frame_size) for t in range(seconds)]
    paths = {"headsets": out / "headsets.wav", "ambient": out / "gopro.wav"}
    if xray == "video":
        import cv2

        path = out / "screen.avi"
        h = frame_size + 48
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), video_fps, (h, h))
        for t in range(seconds):
            bgr = cv2.cvtColor(_screen(frames[t], t, frame_size), cv2.COLOR_RGB2BGR)
            for _ in range(video_fps):
                vw.write(bgr)
        vw.release()
        paths["xray"] = path
    elif xray == "dicom":
        from pocapnet.dicomwrite import write_dicom

        per = int(round(dicom_fps))
        stack = np.stack([frames[t] for t in range(seconds) for _ in range(per)]).astype(np.uint16) * 16
        for k in range(len(stack)):
            stack[k, :16, :16] = second_code(k // per) * 16
        paths["xray"] = write_dicom(out / "xray.dcm", stack, frame_time_ms=1000.0 / dicom_fps)
    else:
        raise ValueError(f"xray must be video or dicom, got {xray!r}")
    ranges, phases = label_ranges(y)
    paths["annotations"] = out / "annotations.json"
    paths["annotations"].write_text(json.dumps([[op, "Dr Phys", "Dr Assist", ranges, phases]]))
    np.save(out / "labels.npy", y)
    paths["labels"] = out / "labels.npy"
    return paths
