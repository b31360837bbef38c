"""pocapnet ingest refuses a WAV cut short (its data chunk shorter than the header declares), naming both lengths;
it used to ingest the stump as a 2 s operation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from pocapnet.data import DataError, read_audio
from pocapnet.ingest import ingest_operation, parse_channel


def test_ingest_refuses_a_truncated_16khz_wav_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    names = []
    for k in range(3):
        p = tmp_path / f"mic{k}.wav"
        sf.write(str(p), rng.uniform(-0.3, 0.3, 16000 * 10).astype(np.float32), 16000, subtype="PCM_16")
        names.append(p)
    full = names[1].read_bytes()  # 320,000 data bytes
    names[1].write_bytes(full[:40_000])
    assert sf.read(str(names[1]))[0].shape[0] < 16000 * 3  # soundfile alone reads the stump without a word
    with pytest.raises(DataError, match=r"mic1\.wav.*320,000 data bytes.*39,956"):
        read_audio(names[1])
    chans = [parse_channel(f"c{k}={p}") for k, p in enumerate(names)]
    out = tmp_path / "out"
    with pytest.raises(DataError, match="truncated WAV"):
        ingest_operation(out, "OP_1", chans, None)
    assert not (out / "OP_1").exists()
