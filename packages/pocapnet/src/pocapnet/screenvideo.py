"""A screen recording of the X-ray monitor: each frame's presentation time, constant or variable frame rate, and
forward decoding of the frames the 1-fps sampling picks.

Screen recorders (Windows Game Bar, macOS, OBS with dropped frames) often write variable-frame-rate (VFR) files:
a frame only when the screen changes. Frame ``k`` is then not at ``k / fps``, so every frame is placed at its own
presentation time, read with OpenCV's FFmpeg backend:

1. :func:`video_frame_times`, a demux-only pass (``CAP_PROP_FORMAT = -1``: packets, no decoding) over the file:
   after each ``grab()``, ``CAP_PROP_POS_MSEC`` is the packet's presentation time in ms from the stream's start
   (packets come in decoding order, so the times are sorted into presentation order);
2. :func:`frame_timing` checks them and says whether the rate is constant;
3. :class:`VideoFrames` decodes forward once, ``grab()`` (decoded, not converted) for the frames it skips and
   ``retrieve()`` for the ones asked for, and checks each returned frame's decoded time (``CAP_PROP_POS_MSEC``
   after ``grab()``: the time of the frame just grabbed) against its packet time.

A stream without any timestamp (e.g. a raw ``.h264`` elementary stream: OpenCV reports 0 ms for every frame) falls
back to frame ``k`` at ``k / fps`` (``--xray-fps``, else the stream's declared rate) with a warning: the file holds
nothing better, and a player shows it at that rate too. A stream where only some frames carry a timestamp, or two
frames share one, is an error naming the file and the fix (re-encode at a constant rate, or ``--xray-fps`` to place
frame ``k`` at ``k / fps`` explicitly), because ``k / fps`` would misplace the frames around the irregular part.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pocapnet.data import DataError

__all__ = ["VideoFrames", "frame_timing", "video_frame_times"]

log = logging.getLogger("pocapnet")

_CFR_TOLERANCE_S = 1.5e-3  # a container's time base rounds 1/fps (Matroska: 1 ms, so 30 fps is 33/34 ms)


def _ffmpeg_fix(path: Path) -> str:
    return f"ffmpeg -i {path.name} -fps_mode cfr -r 30 {path.stem}_cfr.mp4"


def _open(path: Path) -> Any:
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise DataError(
            f"{path}: OpenCV's FFmpeg backend cannot open this video; re-encode it (e.g. {_ffmpeg_fix(path)})"
        )
    return cap


def video_frame_times(path: str | Path) -> tuple[np.ndarray, float, bool]:
    """Presentation times of a video's frames, from its packets.

    Returns:
        ``(ms (n,) float64 in presentation order, the stream's declared fps, demux_only)``; ``demux_only`` is False
        when this OpenCV build has no raw mode and the pass decoded the frames (twice the decoding cost).
    """
    import cv2

    path = Path(path)
    cap = _open(path)
    demux_only = bool(cap.set(cv2.CAP_PROP_FORMAT, -1))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    ms = []
    while cap.grab():
        ms.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    cap.release()
    if not demux_only:
        log.info("%s: this OpenCV build has no raw (demux-only) mode; frame times read by decoding", path)
    return np.sort(np.asarray(ms, dtype=np.float64)), fps, demux_only


def frame_timing(ms: np.ndarray, fps: float, path: Path, fps_flag: float | None = None) -> tuple[np.ndarray, dict]:
    """Frame times (s) from the packets' times ``ms`` (sorted), and the record of how they were found.

    Returns:
        ``(times (n,) s, timing)``; ``timing`` has ``source`` (``timestamps`` or ``k/fps``), ``frame_rate``
        (``constant``, ``variable`` or ``unknown``), ``first_s`` / ``last_s``, the frame intervals' ``min`` /
        ``median`` / ``max`` (s), ``end_s`` (the last frame's time plus the median interval: what the video covers),
        ``declared_fps`` and, for a VFR file, ``max_shift_vs_k_over_fps_s``: how far
        ``k / fps`` would have put a frame from its time.

    Raises:
        DataError: no frames; only some frames with a timestamp or two frames with one (without ``fps_flag``).
    """
    n = len(ms)
    if n == 0:
        raise DataError(f"{path}: no video frames; re-encode it (e.g. {_ffmpeg_fix(path)})")
    timing: dict[str, Any] = {"frames": n, "declared_fps": fps or None}
    stamped = n == 1 or bool(np.any(ms[1:] > 0))  # OpenCV reports a frame without timestamp as 0 ms
    ok = stamped and bool(np.all(np.diff(ms) > 0))
    if not ok:
        rate = fps_flag or fps
        bad = int(np.sum(np.diff(ms) <= 0))
        if stamped and fps_flag is None:
            raise DataError(
                f"{path}: {bad} of {n} frames without a timestamp of their own (missing or repeated), so their "
                f"times are unknown and frame k at k / fps would misplace frames; re-encode at a constant frame rate "
                f"({_ffmpeg_fix(path)}), or pass --xray-fps to place frame k at k / fps"
            )
        if rate <= 0:
            raise DataError(f"{path}: no frame timestamps and no frame rate in the stream; pass --xray-fps")
        why = "the timestamps are incomplete" if stamped else "the stream has no frame timestamps"
        how = "--xray-fps" if fps_flag else "the stream's declared rate"
        log.warning(
            "%s: %s; frame k placed at k / %g s (%s). If the recording has a variable frame rate, re-encode it: %s",
            path,
            why,
            rate,
            how,
            _ffmpeg_fix(path),
        )
        timing.update(source="k/fps", fps=rate, frame_rate="unknown", note=f"{why}; frame k at k / {rate:g} ({how})")
        times = np.arange(n) / rate
        timing.update(first_s=0.0, last_s=float(times[-1]), end_s=n / rate)
        return times, timing
    times = ms / 1000.0
    d = np.diff(times) if n > 1 else np.array([1.0 / fps if fps > 0 else 0.0])
    med = float(np.median(d))
    cfr = bool(np.all(np.abs(d - med) <= max(_CFR_TOLERANCE_S, 0.01 * med)))
    timing.update(
        source="timestamps",
        frame_rate="constant" if cfr else "variable",
        first_s=round(float(times[0]), 6),
        last_s=round(float(times[-1]), 6),
        interval_s={k: round(float(v), 6) for k, v in (("min", d.min()), ("median", med), ("max", d.max()))},
        end_s=float(times[-1] + med),
    )
    if not cfr and fps > 0:
        timing["max_shift_vs_k_over_fps_s"] = round(float(np.max(np.abs(times - np.arange(n) / fps))), 6)
    if fps_flag is not None:
        log.info("%s: --xray-fps %g not used: the video's frames carry timestamps", path, fps_flag)
    log.info(
        "%s: %s frame rate, %d frames at %.3f-%.3f s (intervals %.3f-%.3f s); each frame placed at its timestamp",
        path,
        timing["frame_rate"],
        n,
        times[0],
        times[-1],
        d.min(),
        d.max(),
    )
    return times, timing


class VideoFrames:
    """Frame ``k`` of a video as uint8 RGB ``(H, W, 3)``, decoded forward in one pass.

    ``grab()`` decodes the frames in between without converting them; a request for an earlier frame reopens the
    file and decodes forward again (a seek by frame number assumes a constant rate). When ``times_s`` holds the
    frames' timestamps, each returned frame's decoded time must equal ``times_s[k]`` (else a decoder that drops or
    adds frames would shift every later one): an error names the file and the fix.
    """

    def __init__(self, path: Path, times_s: np.ndarray, check_times: bool) -> None:
        self.path, self.times, self.check = path, times_s, check_times
        self.cap = None
        self.pos = -1  # index of the last grabbed frame
        self.k, self.last = -1, None

    def _reopen(self) -> None:
        if self.cap is not None:
            self.cap.release()
        self.cap, self.pos, self.k, self.last = _open(self.path), -1, -1, None

    def __call__(self, k: int) -> np.ndarray:
        import cv2

        if k == self.k:
            return self.last
        if self.cap is None or k <= self.pos:
            self._reopen()
        while self.pos < k:
            if not self.cap.grab():
                raise DataError(
                    f"{self.path}: video ended at frame {self.pos + 1} of {len(self.times)} (its packets); "
                    f"re-encode it ({_ffmpeg_fix(self.path)})"
                )
            self.pos += 1
        if self.check:
            got = self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if abs(got - self.times[k]) > 5e-4:
                raise DataError(
                    f"{self.path}: frame {k} decodes at {got:.3f} s but its packet is at {self.times[k]:.3f} s (the "
                    f"decoder dropped or added frames); re-encode it ({_ffmpeg_fix(self.path)})"
                )
        ok, frame = self.cap.retrieve()
        if not ok:
            raise DataError(f"{self.path}: cannot decode frame {k}")
        self.k, self.last = k, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return self.last
