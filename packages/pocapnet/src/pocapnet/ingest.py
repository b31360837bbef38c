"""``pocapnet ingest``: raw recordings of one operation -> the layout ``extract`` reads.

Inputs: audio files (mono or multi-channel, any rate) with an explicit channel map ``NAME=FILE[:INDEX]`` (the order
of ``--channel`` options is ``Channel_1.wav``, ``Channel_2.wav``, ...; the paper's order is physician, assistant,
ambient), the X-ray monitor (a video, a DICOM series folder or a multi-frame DICOM, sampled at 1 fps on the audio
clock, :mod:`pocapnet.xraysource`), and annotations (the corpus's ``annotations.json`` or a CSV of ``second,phase``
or ``start,end,phase``).

Steps, in the official order, each only when asked for: pick / mix channels, resample to 16 kHz (polyphase), swap
the two headsets by wearer (``physician``: the code's ``physician_first()``), peak normalisation, mic-off zeroing,
cross-correlation alignment to a reference channel (:mod:`pocapnet.audioprep`). Then the lengths must agree: every
channel the same whole seconds, the X-ray covering them, the labels no longer than the recording; otherwise an error
names the files and ``trim``. Everything done is logged and written to ``OP_xxx/ingest.json``.

Output (written into a hidden temporary folder, renamed into place at the end; nothing is left on failure):
``OP_xxx/Channel_k.wav`` (16 kHz, 32-bit float: no requantisation), ``frame_#####.png`` (frame ``t+1`` for second
``t``), ``labels.csv`` (``second,phase``), ``ingest.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocapnet.audioprep import align_to, peak_normalize, zero_mic_off
from pocapnet.config import PHASES
from pocapnet.data import (
    DataError,
    channel_file,
    check_lengths,
    labels_from_ranges,
    read_annotations,
    read_audio,
    read_label_csv,
    resample,
)
from pocapnet.xraysource import open_xray_source, sample_seconds

__all__ = ["ChannelSpec", "parse_channel", "IngestOptions", "ingest_operation"]

log = logging.getLogger("pocapnet")


@dataclass(frozen=True)
class ChannelSpec:
    """One microphone: ``name`` (e.g. physician), the audio ``path`` and the channel ``index`` inside it (0-based;
    None for a mono file)."""

    name: str
    path: Path
    index: int | None = None


def parse_channel(spec: str) -> ChannelSpec:
    """``"physician=rec.wav:0"`` / ``"ambient=gopro.wav"`` -> :class:`ChannelSpec`."""
    name, eq, rest = spec.partition("=")
    if not eq or not name or not rest:
        raise ValueError(f"--channel {spec!r}: expected NAME=FILE or NAME=FILE:INDEX (e.g. physician=op.wav:0)")
    path, colon, idx = rest.rpartition(":")
    if colon and idx.isdigit():
        return ChannelSpec(name, Path(path), int(idx))
    return ChannelSpec(name, Path(rest), None)


@dataclass(frozen=True)
class IngestOptions:
    """What ``ingest`` may change (all off by default; each one is logged and recorded in ``ingest.json``)."""

    sample_rate: int = 16000  # paper §3.1
    mix_to_mono: bool = False  # average a multi-channel file given without :INDEX
    physician: str | None = None  # swap Channel_1/Channel_2 when annotations say the physician wore headset 2
    peak_normalize: bool = False  # code: pydub normalize (headroom 0.1 dB)
    headroom_db: float = 0.1
    mic_off_threshold: float | None = None  # audioprep.zero_mic_off (calibrate; the code's 1e5 has no stated scale)
    align_to: str | None = None  # channel whose clock the channels of OTHER files are aligned to (code: GoPro)
    align_max_s: float = 1800.0  # code: first 30 min
    align_max_lag_s: float = 60.0
    xray_offset_s: float = 0.0  # audio time at which the X-ray source's clock starts
    xray_fps: float | None = None  # frame rate of DICOMs without timing and of videos without frame timestamps
    crop: tuple[int, int, int, int] | None = None  # x, y, width, height of the X-ray region on the monitor
    fill_before_xray: bool = False  # black frames for seconds before the X-ray source starts
    trim: bool = False  # cut audio, frames and labels to the shortest
    labels_op: str | None = None  # the entry of annotations.json to use (default: the operation name)
    extra: dict[str, Any] = field(default_factory=dict)


def _load_channels(specs: list[ChannelSpec], opt: IngestOptions, rec: dict) -> list[np.ndarray]:
    cache: dict[Path, tuple[np.ndarray, int]] = {}
    out = []
    for s in specs:
        if s.path not in cache:
            cache[s.path] = read_audio(s.path)
        x, sr = cache[s.path]
        r: dict[str, Any] = {"name": s.name, "file": str(s.path), "file_channels": int(x.shape[0]), "rate": sr}
        if s.index is not None:
            if not 0 <= s.index < x.shape[0]:
                raise DataError(
                    f"{s.path} has {x.shape[0]} channel(s); --channel {s.name}={s.path}:{s.index} does "
                    "not exist (indices start at 0)"
                )
            y = x[s.index]
            r["index"] = s.index
        elif x.shape[0] > 1:
            if not opt.mix_to_mono:
                raise DataError(
                    f"{s.path} has {x.shape[0]} channels; name one per microphone with "
                    f"--channel {s.name}={s.path}:INDEX, or pass --mix-to-mono to average them"
                )
            log.warning("%s: %d channels averaged for %s (--mix-to-mono)", s.path, x.shape[0], s.name)
            y = x.mean(axis=0)
            r["mixed_to_mono"] = True
        else:
            y = x[0]
        if sr != opt.sample_rate:
            log.warning("%s (%s): resampled %d -> %d Hz", s.path, s.name, sr, opt.sample_rate)
            y = resample(y, sr, opt.sample_rate)
            r["resampled_to"] = opt.sample_rate
        out.append(np.asarray(y, dtype=np.float32))
        rec["channels"].append(r)
    return out


def _labels(path: Path | None, op: str, n: int, opt: IngestOptions, rec: dict) -> tuple[np.ndarray | None, tuple]:
    if path is None:
        return None, ()
    changes: list[str] = rec["changes"]
    if path.suffix.lower() == ".json":
        ann = read_annotations(path)
        key = opt.labels_op or op
        if key not in ann:
            raise DataError(f"{path} has no entry {key!r} (entries: {sorted(ann)[:5]} ...); pass --labels-op")
        a = ann[key]
        return labels_from_ranges(a.ranges, a.phases, n, op, trim=opt.trim, changes=changes), a.wearers
    return read_label_csv(path, n, trim=opt.trim, changes=changes), ()


def _swap_by_wearer(
    waves: list[np.ndarray], specs: list[ChannelSpec], wearers: tuple, opt: IngestOptions, rec: dict
) -> tuple[list[np.ndarray], list[ChannelSpec]]:
    if opt.physician is None:
        return waves, specs
    if len(wearers) < 2 or len(waves) < 2:
        raise DataError("--physician needs annotations.json wearers (ch1_wearer, ch2_wearer) and two headset channels")
    if wearers[0] == opt.physician:
        rec["wearer_swap"] = False
        return waves, specs
    if wearers[1] != opt.physician:
        raise DataError(f"--physician {opt.physician!r} wore neither headset (annotations: {list(wearers[:2])})")
    log.warning("headsets swapped: %s wore headset 2, now Channel_1 (--physician)", opt.physician)
    rec["wearer_swap"] = True
    rec["changes"].append("Channel_1 and Channel_2 swapped by wearer")
    return [waves[1], waves[0], *waves[2:]], [specs[1], specs[0], *specs[2:]]


def _preprocess(waves: list[np.ndarray], specs: list[ChannelSpec], opt: IngestOptions, rec: dict) -> list[np.ndarray]:
    sr = opt.sample_rate
    for i, s in enumerate(specs):
        r = rec["channels"][i]
        if opt.peak_normalize:
            waves[i], r["peak_normalize"] = peak_normalize(waves[i], opt.headroom_db)
        if opt.mic_off_threshold is not None:
            waves[i], r["mic_off"] = zero_mic_off(waves[i], opt.mic_off_threshold)
            if r["mic_off"]["frames"]:
                log.warning("%s: %.2f s zeroed as mic-off noise", s.name, r["mic_off"]["zeroed_samples"] / sr)
    if opt.align_to is not None:
        names = [s.name for s in specs]
        if opt.align_to not in names:
            raise DataError(f"--align-to {opt.align_to!r} is not a channel name ({', '.join(names)})")
        ref_spec = specs[names.index(opt.align_to)]
        ref = waves[names.index(opt.align_to)]
        for i, s in enumerate(specs):
            if s.path.resolve() == ref_spec.path.resolve():  # channels of one file share its clock
                continue
            waves[i], a = align_to(waves[i], ref, sr, opt.align_max_s, opt.align_max_lag_s)
            rec["channels"][i]["alignment"] = a
            log.warning("%s aligned to %s: lag %+.3f s", s.name, opt.align_to, a["lag_s"])
            rec["changes"].append(
                f"{s.name} shifted by {-a['lag_s']:+.4f} s onto {opt.align_to}'s clock, end "
                f"padded {a['end_padded_samples']} / cut {a['end_cut_samples']} samples"
            )
    return waves


def _check_lengths(
    waves: list[np.ndarray], specs: list[ChannelSpec], covered: int, what: str, opt: IngestOptions, rec: dict
) -> int:
    lengths = {s.name: len(w) // opt.sample_rate for s, w in zip(specs, waves, strict=True)}
    if covered >= 0:
        lengths[what] = covered
    return check_lengths(
        lengths, opt.trim, rec["op"], "align the recordings (--align-to, --xray-offset)", rec["changes"]
    )


def _write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    import soundfile as sf

    sf.write(str(path), x, sr, subtype="FLOAT")


def ingest_operation(
    out_root: str | Path,
    op: str,
    channels: list[ChannelSpec],
    xray: str | Path | None,
    labels: str | Path | None = None,
    options: IngestOptions | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out_root/op`` from raw recordings; returns the ``ingest.json`` record.

    Raises:
        DataError / FileNotFoundError: bad or inconsistent input (nothing is written).
        FileExistsError: ``out_root/op`` exists and ``overwrite`` is off.
    """
    from PIL import Image

    opt = options or IngestOptions()
    if not channels and xray is None:
        raise ValueError("nothing to ingest: give --channel (audio) and/or --xray")
    out_root = Path(out_root)
    final = out_root / op
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    rec: dict[str, Any] = {
        "op": op,
        "channels": [],
        "changes": [],
        "options": {k: v for k, v in asdict(opt).items() if k != "extra"},
    }
    waves = _load_channels(channels, opt, rec)
    n_audio = min((len(w) // opt.sample_rate for w in waves), default=-1)
    lab_path = Path(labels) if labels is not None else None
    wearers: tuple = ()
    if lab_path is not None and lab_path.suffix.lower() == ".json":
        ann = read_annotations(lab_path)
        wearers = ann[opt.labels_op or op].wearers if (opt.labels_op or op) in ann else ()
    waves, channels = _swap_by_wearer(waves, channels, wearers, opt, rec)
    waves = _preprocess(waves, channels, opt, rec)
    src = idx = None
    covered = -1
    if xray is not None:
        src = open_xray_source(xray, opt.xray_fps)
        idx, before, covered = sample_seconds(
            src, max(n_audio, 0) if waves else int(np.ceil(src.times[-1])) + 1, opt.xray_offset_s
        )
        rec["xray"] = {
            "source": str(src.path),
            "kind": src.kind,
            "images": int(len(src.times)),
            "fps": src.fps,
            "offset_s": opt.xray_offset_s,
            "hold": "last image until the next",
        }
        if src.timing is not None:
            rec["xray"]["timing"] = src.timing
        if before:
            if not opt.fill_before_xray:
                raise DataError(
                    f"{src.path}: the X-ray source starts {before} s after the audio (offset "
                    f"{opt.xray_offset_s:g} s); pass --fill-before-xray for black frames there, or "
                    "correct --xray-offset"
                )
            log.warning("%d s before the X-ray source starts get black frames (--fill-before-xray)", before)
            rec["changes"].append(f"{before} s of black frames before the X-ray source starts")
    n = _check_lengths(waves, channels, covered, "X-ray", opt, rec) if waves else covered
    y, wearers = _labels(lab_path, op, n, opt, rec)
    tmp = out_root / f".{op}.ingest-partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for k, w in enumerate(waves, start=1):
            _write_wav(tmp / channel_file(k), w, opt.sample_rate)
        if src is not None and idx is not None:
            blank = None
            for t in range(n):
                if idx[t] < 0:
                    if blank is None:
                        shape = src.get(0).shape
                        blank = np.zeros(shape, np.uint8)
                    img = blank
                else:
                    img = src.get(int(idx[t]))
                if opt.crop is not None:
                    x0, y0, w_, h_ = opt.crop
                    img = img[y0 : y0 + h_, x0 : x0 + w_]
                Image.fromarray(img).save(tmp / f"frame_{t + 1:05d}.png")
        if y is not None:
            with (tmp / "labels.csv").open("w", newline="") as f:
                wr = csv.writer(f)
                wr.writerow(["second", "phase"])
                wr.writerows([t, PHASES[int(c)]] for t, c in enumerate(y))
        rec.update(
            {
                "seconds": n,
                "wearers": list(wearers),
                "channel_names": [s.name for s in channels],
                "labels": None if lab_path is None else str(lab_path),
            }
        )
        (tmp / "ingest.json").write_text(json.dumps(rec, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("ingested %s: %d s, %d channels%s", op, n, len(waves), ", X-ray" if src is not None else "")
    return rec
