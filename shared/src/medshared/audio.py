"""One WAV reader for the packages: soundfile's decoding, plus a check that the file holds what its header declares.

libsndfile reads a WAV whose ``data`` chunk is shorter than its header says without complaint: it returns the
samples that are there. A recording cut short in a copy (e.g. a 2,646,000-byte data chunk of which 29,956 bytes
arrived) then passes as a 0.2 s recording. :func:`read_wav` refuses it with :class:`TruncatedWavError`, naming the
file and both byte counts. Everything else is read exactly as ``soundfile.read(path, dtype=..., always_2d=True)``
reads it (16/24/32-bit PCM, float, any rate), which is what lungcvt and pocapnet did before.

Layout checked (RIFF/RIFX/RF64; Microsoft WAVE): a 12-byte ``RIFF <size> WAVE`` header, then chunks
``<4-byte id> <4-byte size> <payload, padded to even>``; the samples are the ``data`` chunk's payload. RF64 keeps
the real data size in its ``ds64`` chunk. A declared size of 0xFFFFFFFF (a stream writer that never rewound to fill
it in) is not checked. Non-WAV files (FLAC, OGG...) are passed to soundfile unchecked.

soundfile is imported when a file is read: it is a dependency of the packages that read audio (lungcvt, pocapnet),
not of medshared.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

__all__ = ["TruncatedWavError", "wav_data_sizes", "check_wav_complete", "read_wav"]

_UNKNOWN = 0xFFFFFFFF


class TruncatedWavError(ValueError):
    """A WAV's data chunk holds fewer bytes than its header declares (the message names file and both counts)."""


def wav_data_sizes(path: str | Path) -> tuple[int, int] | None:
    """``(declared, actual)`` byte counts of a WAV file's ``data`` chunk, or ``None`` when the file is not a RIFF/RF64
    WAV or its writer left the size unknown (0xFFFFFFFF).

    ``actual`` is what the file holds after the chunk header (capped at nothing: it may exceed ``declared`` when
    other chunks follow the data).

    Raises:
        TruncatedWavError: the file ends before its ``data`` chunk starts.
    """
    path = Path(path)
    total = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
            return None
        endian = ">" if head[:4] == b"RIFX" else "<"
        ds64_data: int | None = None
        pos = 12
        while True:
            fh.seek(pos)
            hdr = fh.read(8)
            if len(hdr) < 8:
                raise TruncatedWavError(
                    f"{path}: truncated WAV: the file ends after {total} bytes, before its data chunk "
                    "(re-copy or re-export the recording)"
                )
            cid, size = hdr[:4], struct.unpack(endian + "I", hdr[4:])[0]
            if cid == b"ds64":  # RF64: riffSize (8), dataSize (8), sampleCount (8), ...
                body = fh.read(16)
                if len(body) == 16:
                    ds64_data = struct.unpack("<Q", body[8:16])[0]
            if cid == b"data":
                declared = ds64_data if (head[:4] == b"RF64" and size == _UNKNOWN and ds64_data) else size
                if declared == _UNKNOWN:
                    return None
                return int(declared), int(total - pos - 8)
            pos += 8 + size + (size & 1)


def check_wav_complete(path: str | Path) -> None:
    """Raise :class:`TruncatedWavError` when ``path``'s data chunk is shorter than its header declares."""
    sizes = wav_data_sizes(path)
    if sizes is None:
        return
    declared, actual = sizes
    if actual < declared:
        raise TruncatedWavError(
            f"{path}: truncated WAV: its header declares {declared:,} data bytes, the file holds {actual:,} "
            f"({100.0 * actual / max(declared, 1):.1f} %); the copy is incomplete, re-copy or re-export it"
        )


def read_wav(path: str | Path, *, dtype: str = "float32", always_2d: bool = True) -> tuple[np.ndarray, int]:
    """Read an audio file with soundfile after :func:`check_wav_complete`.

    Args:
        path: the file (WAV checked for truncation; other soundfile formats read as they are).
        dtype: sample type, as ``soundfile.read`` (``"float32"``: PCM scaled to [-1, 1)).
        always_2d: return [N, channels] even for mono files (soundfile's layout).

    Returns:
        (samples [N, C] (or [N] for mono without ``always_2d``), sample rate in Hz).

    Raises:
        FileNotFoundError: no such file.
        TruncatedWavError: the data chunk is shorter than declared.
        ValueError: soundfile cannot decode the file (its message included).
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    check_wav_complete(path)
    try:
        x, sr = sf.read(str(path), dtype=dtype, always_2d=always_2d)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError depending on the version
        raise ValueError(f"{path}: unreadable audio file ({e}); re-export it as PCM WAV") from e
    return x, int(sr)
