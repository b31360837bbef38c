"""Live input: seconds of an operation folder that a recorder is still writing (``predict --stream --follow``).

A recorder appends PCM samples to each ``Channel_k.wav`` and writes ``frame_#####.<ext>`` files (frame ``t+1`` for
second ``t``). :class:`GrowingWav` reads what a WAV file holds *now* from its size (a recorder typically fixes the
RIFF size fields only when it closes the file), and :func:`follow_seconds` yields second ``t`` as soon as every
channel holds ``(t + 1) * sr`` samples and frame ``t + 1`` is readable. It stops after ``<op>/END`` appears (the
recorder's end-of-recording marker; every complete second is still read) or after ``idle_timeout_s`` without a new
second. Frames should be written atomically (write a temporary name, then rename); a frame that cannot be decoded yet
is retried until the idle timeout.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pocapnet.data import FRAME_SUFFIXES, DataError, channel_file, read_frame

__all__ = ["GrowingWav", "follow_seconds", "END_MARKER"]

log = logging.getLogger("pocapnet")
END_MARKER = "END"
_FORMATS = {(1, 2): "<i2", (1, 4): "<i4", (3, 4): "<f4", (3, 8): "<f8", (1, 3): "i24"}


class GrowingWav:
    """A mono WAV file that may still be growing.

    Raises:
        DataError: not a RIFF/WAVE file, an unsupported sample format, or more than one channel (the live path
            reads one microphone per file; split channels with ``pocapnet ingest``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                raise DataError(f"{self.path}: not a RIFF/WAVE file")
            fmt = None
            while True:
                h = f.read(8)
                if len(h) < 8:
                    raise EOFError(f"{self.path}: no data chunk yet")
                cid, size = h[:4], struct.unpack("<I", h[4:])[0]
                if cid == b"fmt ":
                    body = f.read(size + (size & 1))
                    tag, ch, sr = struct.unpack("<HHI", body[:8])
                    bits = struct.unpack("<H", body[14:16])[0]
                    if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first word
                        tag = struct.unpack("<H", body[24:26])[0]
                    fmt = (tag, ch, sr, bits)
                elif cid == b"data":
                    self.data_offset = f.tell()
                    break
                else:
                    f.seek(size + (size & 1), 1)
        if fmt is None:
            raise DataError(f"{self.path}: WAV without a fmt chunk")
        tag, ch, self.sample_rate, bits = fmt
        if ch != 1:
            raise DataError(
                f"{self.path}: {ch} channels; the live path reads one microphone per file (split the "
                "channels with `pocapnet ingest --channel NAME=FILE:INDEX`)"
            )
        key = (tag, bits // 8)
        if key not in _FORMATS:
            raise DataError(
                f"{self.path}: unsupported WAV sample format (tag {tag}, {bits} bits); record 16/24/32-bit "
                "PCM or 32/64-bit float"
            )
        self.width = bits // 8
        self._dtype = _FORMATS[key]

    def available(self) -> int:
        """Samples in the file now: from its size while the header's data size is a placeholder; never past a
        final data size (a closed file may carry chunks after its samples)."""
        n = max(0, (self.path.stat().st_size - self.data_offset) // self.width)
        with self.path.open("rb") as f:
            f.seek(self.data_offset - 4)
            size = struct.unpack("<I", f.read(4))[0]
        if 0 < size < 0xFFFFFFFF and self.data_offset + size <= self.path.stat().st_size:
            n = min(n, size // self.width)
        return n

    def read(self, start: int, n: int) -> np.ndarray:
        """``n`` samples from ``start`` as float32 in [-1, 1]."""
        with self.path.open("rb") as f:
            f.seek(self.data_offset + start * self.width)
            raw = f.read(n * self.width)
        if len(raw) < n * self.width:
            raise EOFError(f"{self.path}: {n} samples at {start} not written yet")
        if self._dtype == "i24":
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            v = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 bits
            return (v / 8388608.0).astype(np.float32)
        x = np.frombuffer(raw, self._dtype)
        if x.dtype.kind == "i":
            return (x / float(2 ** (8 * self.width - 1))).astype(np.float32)
        return x.astype(np.float32)


def _frame(op_dir: Path, t: int) -> Path | None:
    for ext in FRAME_SUFFIXES:
        p = op_dir / f"frame_{t + 1:05d}{ext}"
        if p.is_file():
            return p
    return None


def follow_seconds(
    op_dir: str | Path,
    channels: Sequence[int] = (1, 2, 3),
    sample_rate: int = 16000,
    need_audio: bool = True,
    need_xray: bool = True,
    poll_s: float = 0.05,
    idle_timeout_s: float = 10.0,
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """Yield ``(t, samples (M, sr) | None, frame | None)`` for each second as it becomes complete.

    Raises:
        DataError: a channel's sample rate is not ``sample_rate`` (a live stream is not resampled: record at 16 kHz,
            or ingest the finished recording).
    """
    op_dir = Path(op_dir)
    wavs: list[GrowingWav | None] = [None] * len(channels)
    t, last_new = 0, time.monotonic()
    while True:
        ready = True
        if need_audio:
            for i, k in enumerate(channels):
                if wavs[i] is None:
                    try:
                        wavs[i] = GrowingWav(op_dir / channel_file(k))
                    except (FileNotFoundError, EOFError):
                        ready = False
                        continue
                    if wavs[i].sample_rate != sample_rate:
                        raise DataError(
                            f"{wavs[i].path}: {wavs[i].sample_rate} Hz, but the model reads {sample_rate} "
                            "Hz; a live stream is not resampled (record at that rate)"
                        )
                if wavs[i].available() < (t + 1) * sample_rate:
                    ready = False
        frame = None
        if ready and need_xray:
            p = _frame(op_dir, t)
            if p is None:
                ready = False
            else:
                try:
                    frame = read_frame(p)
                except DataError:  # still being written
                    ready = False
        if ready:
            samples = np.stack([w.read(t * sample_rate, sample_rate) for w in wavs]) if need_audio else None
            yield t, samples, frame
            t += 1
            last_new = time.monotonic()
            continue
        if (op_dir / END_MARKER).exists():
            log.info("%s: end marker found after %d s", op_dir, t)
            return
        if time.monotonic() - last_new > idle_timeout_s:
            log.warning("%s: no new complete second for %.0f s; stopping after %d s", op_dir, idle_timeout_s, t)
            return
        time.sleep(poll_s)
