"""ICBHI 2017 Respiratory Sound Database loader.

Layout (Rocha et al., Physiol. Meas. 40 (2019) 035001; brief section 6)::

    ICBHI_final_database/
        101_1b1_Al_sc_Meditron.wav      any rate (4 kHz, 10 kHz, 44.1 kHz), 16- or 24-bit PCM
        101_1b1_Al_sc_Meditron.txt      one line per cycle: start_s<TAB>end_s<TAB>crackles<TAB>wheezes
        ...
    ICBHI_challenge_train_test.txt      <recording stem><TAB>train|test   (920 lines)

File names are ``{patient}_{recording index}_{chest location}_{acquisition mode}_{equipment}``. Cycle labels:
0 normal, 1 crackle, 2 wheeze, 3 both. The official split file names ``226_1b1_Pl_sc_LittC2SE`` as
``226_1b1_Pl_sc_Meditron``; :func:`resolve_split` maps it (as the official LungCVT code renames it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "Cycle",
    "RecordingInfo",
    "Recording",
    "parse_stem",
    "read_annotations",
    "load_audio",
    "find_recordings",
    "read_split",
    "resolve_split",
    "load_dataset",
    "SPLIT_FILE_NAME",
    "KNOWN_SPLIT_QUIRKS",
    "device_notes",
    "audio_summary",
]

log = logging.getLogger(__name__)

SPLIT_FILE_NAME = "ICBHI_challenge_train_test.txt"
LOCATIONS = ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr")
MODES = ("sc", "mc")
DEVICES = ("AKGC417L", "LittC2SE", "Litt3200", "Meditron")
#: split-file stem -> real file stem (brief section 6: the split file lists this LittC2SE recording as Meditron).
KNOWN_SPLIT_QUIRKS: dict[str, str] = {"226_1b1_Pl_sc_Meditron": "226_1b1_Pl_sc_LittC2SE"}
_STEM_RE = re.compile(r"^(\d+)_([0-9A-Za-z]+)_([A-Za-z]+)_([a-z]+)_([0-9A-Za-z]+)$")


class DataError(ValueError):
    """An input file is missing or malformed; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class Cycle:
    """One annotated respiratory cycle.

    Attributes:
        start: start time in seconds.
        end: end time in seconds.
        crackles: crackle flag (0/1).
        wheezes: wheeze flag (0/1).
    """

    start: float
    end: float
    crackles: int
    wheezes: int

    @property
    def label(self) -> int:
        """0 normal, 1 crackle, 2 wheeze, 3 both."""
        return self.crackles + 2 * self.wheezes

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class RecordingInfo:
    """The fields of an ICBHI file name."""

    patient: int
    index: str
    location: str
    mode: str
    device: str


@dataclass
class Recording:
    """A recording on disk with its cycles and split."""

    stem: str
    wav: Path
    txt: Path
    info: RecordingInfo
    cycles: list[Cycle]
    split: str | None = None


def parse_stem(stem: str) -> RecordingInfo:
    """Parse ``{patient}_{index}_{location}_{mode}_{device}``; raises :class:`DataError` on a foreign name."""
    m = _STEM_RE.match(stem)
    if m is None:
        raise DataError(
            f"{stem!r} is not an ICBHI file name; expected '{{patient}}_{{index}}_{{location}}_{{mode}}_{{device}}', "
            "e.g. '101_1b1_Al_sc_Meditron'"
        )
    patient, index, location, mode, device = m.groups()
    return RecordingInfo(int(patient), index, location, mode, device)


def read_annotations(path: str | Path) -> list[Cycle]:
    """Read an ICBHI annotation file (``start end crackles wheezes`` per line, tab or space separated).

    Raises:
        DataError: the file is missing, empty, or a line is malformed (the message names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path} (every .wav needs a .txt with the same stem)")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text annotation file ({e})") from None
    cycles: list[Cycle] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) != 4:
            raise DataError(f"{where}: expected 4 fields 'start end crackles wheezes', got {len(parts)}: {line!r}")
        try:
            start, end = float(parts[0]), float(parts[1])
            crackles, wheezes = int(parts[2]), int(parts[3])
        except ValueError:
            raise DataError(f"{where}: non-numeric field in {line!r}") from None
        if crackles not in (0, 1) or wheezes not in (0, 1):
            raise DataError(f"{where}: crackles/wheezes must be 0 or 1, got {crackles} {wheezes}")
        if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end <= start:
            raise DataError(f"{where}: need 0 <= start < end, got start={start} end={end}")
        cycles.append(Cycle(start, end, crackles, wheezes))
    if not cycles:
        raise DataError(f"{path}: no cycles (empty annotation file)")
    return cycles


def load_audio(
    path: str | Path, sample_rate: int | None, channels: str = "mono", band_limit_hz: float | None = None
) -> tuple[np.ndarray, int]:
    """Read a WAV (any rate, 16/24/32-bit PCM or float), optionally band-limit it, resample.

    Args:
        path: audio file.
        sample_rate: target rate in Hz (``None`` keeps the native rate). Resampling uses soxr_hq, as
            ``librosa.load`` in the official code.
        channels: ``"mono"``: a multi-channel file is an error (ICBHI recordings are mono); ``"mix"``: average the
            channels (logged).
        band_limit_hz: low-pass at this frequency first, by resampling to ``2 * band_limit_hz`` (soxr_hq) when the
            native rate is higher: the path a 4 kHz Litt3200 file takes with ``band_limit_hz=2000`` (logged).

    Returns:
        (audio float32 [N] in [-1, 1], rate in Hz).

    Raises:
        DataError: missing, unreadable, truncated (data chunk shorter than the header declares; both byte counts
            named) or (with ``channels="mono"``) multi-channel file.
    """
    from medshared.audio import TruncatedWavError, read_wav

    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file not found: {path}")
    try:
        audio, sr = read_wav(path)  # [N, channels]; a data chunk shorter than its header declares is refused
    except TruncatedWavError as e:
        raise DataError(str(e)) from None
    except ValueError as e:
        why = e.__cause__ or e
        raise DataError(f"{path}: unreadable WAV ({why}); re-download or re-export it as PCM WAV") from None
    if audio.shape[0] == 0:
        raise DataError(f"{path}: WAV has no samples")
    if audio.shape[1] > 1:
        if channels != "mix":
            raise DataError(
                f"{path}: {audio.shape[1]} channels; ICBHI recordings are mono. Export one channel, or set "
                "features.channels: mix (CLI --mix-channels) to average them"
            )
        log.info("%s: %d channels averaged to mono (features.channels=mix)", path.name, audio.shape[1])
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]  # [N, C] -> [N]
    if band_limit_hz is not None and sr > 2 * band_limit_hz:
        import librosa

        low = int(round(2 * band_limit_hz))
        log.debug("%s: band-limited to %g Hz (resampled %d -> %d Hz)", path.name, band_limit_hz, sr, low)
        audio = librosa.resample(audio, orig_sr=sr, target_sr=low, res_type="soxr_hq").astype(np.float32)
        sr = low
    if sample_rate is not None and sr != sample_rate:
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq").astype(np.float32)
        sr = sample_rate
    return np.ascontiguousarray(audio, dtype=np.float32), int(sr)


def find_recordings(data_dir: str | Path) -> dict[str, tuple[Path, Path]]:
    """Map stem -> (wav, txt) for every ICBHI-named ``.wav`` under ``data_dir`` (searched recursively).

    Raises:
        DataError: the folder is missing, holds no ICBHI wav files, or a wav has no annotation file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir} (pass --data pointing at ICBHI_final_database)")
    found: dict[str, tuple[Path, Path]] = {}
    for wav in sorted(data_dir.rglob("*.wav")):
        if _STEM_RE.match(wav.stem) is None:
            continue
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            raise DataError(f"annotation file not found: {txt} (every .wav needs a .txt with the same stem)")
        if wav.stem in found:
            raise DataError(f"recording {wav.stem} appears twice: {found[wav.stem][0]} and {wav}")
        found[wav.stem] = (wav, txt)
    if not found:
        raise DataError(f"no ICBHI recordings (*.wav named like 101_1b1_Al_sc_Meditron.wav) under {data_dir}")
    return found


def read_split(path: str | Path) -> dict[str, str]:
    """Read the official split file (``stem<TAB>train|test``); prefers ``medshared.splits.read_split_file``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path} (the official one is {SPLIT_FILE_NAME})")
    try:
        from medshared.splits import read_split_file

        return dict(read_split_file(path))
    except ImportError:  # pragma: no cover - medshared is a declared dependency
        pass
    except (ValueError, KeyError) as e:
        raise DataError(f"{path}: malformed split file ({e})") from None
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("train", "test"):
            raise DataError(f"{path}:{lineno}: expected 'stem<TAB>train|test', got {line!r}")
        out[parts[0]] = parts[1]
    return out


def resolve_split(
    split: dict[str, str], stems: Iterable[str], allow_partial: bool = False
) -> tuple[dict[str, str], list[str]]:
    """Match split-file entries to recordings found on disk.

    The known quirk (``226_1b1_Pl_sc_Meditron`` for the LittC2SE file) is mapped. Recordings absent from the split
    file are an error (their split is unknown).

    Args:
        split: stem -> "train"/"test" as read from the file.
        stems: recordings found on disk.
        allow_partial: accept split entries whose recording is absent (a subset of the database).

    Returns:
        (stem on disk -> split, list of split entries without recordings).

    Raises:
        DataError: entries without recordings (unless ``allow_partial``) or recordings without entries.
    """
    stems = set(stems)
    mapped: dict[str, str] = {}
    missing: list[str] = []
    for stem, part in split.items():
        real = stem
        if real not in stems and stem in KNOWN_SPLIT_QUIRKS and KNOWN_SPLIT_QUIRKS[stem] in stems:
            real = KNOWN_SPLIT_QUIRKS[stem]
            log.info("split file quirk: %s -> %s", stem, real)
        if real in stems:
            mapped[real] = part
        else:
            missing.append(stem)
    unassigned = sorted(stems - set(mapped))
    if unassigned:
        raise DataError(
            f"{len(unassigned)} recording(s) have no entry in the split file, e.g. {unassigned[:3]}; "
            "use the official ICBHI_challenge_train_test.txt or add them"
        )
    if missing and not allow_partial:
        raise DataError(
            f"{len(missing)} split-file entr{'y' if len(missing) == 1 else 'ies'} without recordings, "
            f"e.g. {missing[:3]}; check the download is complete, or pass --allow-partial to use a subset"
        )
    return mapped, missing


def load_dataset(
    data_dir: str | Path,
    split_file: str | Path | None = None,
    allow_partial: bool = False,
    use_split_file: bool = True,
) -> tuple[list[Recording], list[str]]:
    """Index an ICBHI folder: recordings, their cycles and their official split.

    Args:
        data_dir: folder with ``*.wav`` + ``*.txt``.
        split_file: split file; defaults to ``data_dir/ICBHI_challenge_train_test.txt`` (or its parent's). Without
            any split file every recording's split is ``None``.
        allow_partial: see :func:`resolve_split`.
        use_split_file: ``False`` ignores any split file (every split ``None``; protocols other than the official one).

    Returns:
        (recordings sorted by stem, split entries without recordings).
    """
    data_dir = Path(data_dir)
    files = find_recordings(data_dir)
    if split_file is None and use_split_file:
        for cand in (data_dir / SPLIT_FILE_NAME, data_dir.parent / SPLIT_FILE_NAME):
            if cand.is_file():
                split_file = cand
                break
    mapping: dict[str, str] = {}
    missing: list[str] = []
    if split_file is not None and use_split_file:
        mapping, missing = resolve_split(read_split(split_file), files, allow_partial=allow_partial)
    recs = []
    for stem, (wav, txt) in sorted(files.items()):
        recs.append(Recording(stem, wav, txt, parse_stem(stem), read_annotations(txt), mapping.get(stem)))
    return recs, missing


def check_cycles_within(rec: Recording, duration_s: float, tolerance_s: float = 0.5) -> list[Cycle]:
    """Return the cycles with their ends clipped to the audio (no audio exists past it; logged when more than 20 ms);
    a cycle starting past the end or ending more than ``tolerance_s`` after it raises.

    Raises:
        DataError: naming the annotation file, line and durations.
    """
    out = []
    for i, c in enumerate(rec.cycles, 1):
        if c.end > duration_s + tolerance_s or c.start >= duration_s:
            raise DataError(
                f"{rec.txt}:{i}: cycle {c.start:.3f}-{c.end:.3f} s lies beyond the end of {rec.wav.name} "
                f"({duration_s:.3f} s); fix the annotation or the audio file"
            )
        if c.end > duration_s + 0.02:
            log.warning(
                "%s:%d: cycle end %.3f s clipped to the end of the audio (%.3f s)", rec.txt, i, c.end, duration_s
            )
        out.append(Cycle(c.start, min(c.end, duration_s), c.crackles, c.wheezes))
    return out


# the per-device report helpers live in their own module (they import Recording from here)
from lungcvt.device_report import audio_summary, device_notes  # noqa: E402
