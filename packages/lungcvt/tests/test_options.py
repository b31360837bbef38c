"""Feature options (band limit, fmax, the paper's Hamming/HTK), the batched resize, DataLoader workers, the
notebook's subset, the resume state, sharded feature extraction and per-device fine-tuning."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from lungcvt.config import FeatureConfig, get_config


def _band_db(y: np.ndarray, sr: int, lo: float, hi: float) -> float:
    """Power in [lo, hi) Hz relative to the whole signal's power, in dB (Welch, Hann windows of 2048: a plain FFT of
    the whole file leaks about -60 dB from the strong low band)."""
    from scipy.signal import welch

    f, p = welch(y, sr, nperseg=2048)
    return float(10 * np.log10(p[(f >= lo) & (f < hi)].sum() / p.sum() + 1e-30))


def test_upsampled_4k_files_have_an_empty_upper_band(icbhi_real):
    """Litt3200 audio (4 kHz) upsampled to 22,050 Hz holds nothing above 2 kHz: -131 dB of its power in 2.1-4 kHz
    (numerical noise), against -36 to -63 dB for the 44.1 kHz devices (README "Devices")."""
    from lungcvt.data import load_audio

    for wav in sorted(icbhi_real.glob("*.wav")):
        y, sr = load_audio(wav, 22050)
        db = _band_db(y, sr, 2100, 4000)
        assert db < -100 if wav.stem.endswith("Litt3200") else db > -70, (wav.name, db)


def test_band_limit_makes_44k_audio_look_like_4k(icbhi_real):
    from lungcvt.data import load_audio

    wav = icbhi_real / "101_1b1_Al_sc_Meditron.wav"
    full, _ = load_audio(wav, 22050)
    lim, sr = load_audio(wav, 22050, band_limit_hz=2000)
    assert sr == 22050 and abs(len(lim) - len(full)) <= 2
    assert _band_db(full, sr, 2100, 4000) > -70
    assert _band_db(lim, sr, 2100, 4000) < -100  # as the Litt3200 files
    n = min(len(lim), len(full))
    assert abs(_band_db(lim[:n], sr, 100, 1800) - _band_db(full[:n], sr, 100, 1800)) < 0.5  # the band below: kept
    litt = icbhi_real / "104_1b1_Ar_sc_Litt3200.wav"  # already at 4 kHz: unchanged
    np.testing.assert_array_equal(load_audio(litt, 22050, band_limit_hz=2000)[0], load_audio(litt, 22050)[0])


def test_fmax_limits_the_mel_filter_banks():
    from lungcvt.features import BatchedFeaturizer

    cfg = FeatureConfig(backend="torch", fmax=2000.0)
    fz = BatchedFeaturizer(cfg)
    freqs = np.fft.rfftfreq(cfg.n_fft, 1 / cfg.sample_rate)
    used = (fz.fb_t.numpy() != 0).any(axis=1)  # FFT bins any mel or MFCC filter reads
    assert freqs[used].max() <= 2000.0 + cfg.sample_rate / cfg.n_fft
    assert (freqs[(fz.fb_t.numpy() != 0).any(axis=1)] > 2100).sum() == 0
    full = BatchedFeaturizer(FeatureConfig(backend="torch"))
    assert freqs[(full.fb_t.numpy() != 0).any(axis=1)].max() > 10000
    with pytest.raises(ValueError, match="fmax"):
        FeatureConfig(fmax=20000.0)


@pytest.mark.parametrize("method", ["loop", "matmul"])
@pytest.mark.parametrize(
    "mode,norm,size", [("faithful", "cycle", 224), ("clean", "cycle", 64), ("clean", "coefficient", 64)]
)
def test_batch_to_image_equals_per_item(method, mode, norm, size):
    from lungcvt.images import batch_to_image, collate_cycles, to_image

    cfg = FeatureConfig(mode=mode, mfcc_norm=norm, image_size=size)
    rng = np.random.default_rng(0)
    feats = [
        torch.tensor(rng.standard_normal((3, 96, t)) * 20 - 40, dtype=torch.float16)
        for t in (2, 50, 117, 300, 117, 700)
    ]
    x, lens, _ = collate_cycles([(f, 0) for f in feats])
    got = batch_to_image(x, lens, cfg, method)
    ref = torch.stack([to_image(f.float(), cfg) for f in feats])
    scale = float(ref.abs().max())
    assert float((got - ref).abs().max()) < 2e-5 * scale  # float32 rounding of the products
    with pytest.raises(ValueError, match="do not fit"):
        batch_to_image(x, [1000] * len(feats), cfg, method)


def test_workers_seed_augmentation_per_worker_and_epoch():
    """time_roll inside 2 DataLoader workers: draws differ between workers and epochs, and a loader generator with
    the same seed reproduces them (what resume restores)."""
    from lungcvt.dataset import CycleDataset, CycleSet, make_loader

    base = np.tile(np.arange(50, dtype=np.float16), (3, 4, 1))  # [3, 4, 50]: frame t holds the value t
    cs = CycleSet(feats=[base.copy() for _ in range(8)], labels=[0] * 8)

    def shifts(seed: int, epochs: int = 2) -> list[list[int]]:
        dl = make_loader(
            CycleDataset(cs, time_roll=True), 2, generator=torch.Generator().manual_seed(seed), num_workers=2
        )
        return [
            [int(x[i, 0, 0, 0, 0]) if x.dim() == 5 else int(x[i, 0, 0, 0]) for x, _, _ in dl for i in range(2)]
            for _ in range(epochs)
        ]

    a, b = shifts(0), shifts(0)
    assert a == b  # reproducible from the generator
    assert a[0] != a[1]  # a new draw every epoch
    w0, w1 = a[0][0::4] + a[0][1::4], a[0][2::4] + a[0][3::4]  # batches alternate between the two workers
    assert w0 != w1
    assert len(set(a[0])) > 3  # not one shift for everything
    assert shifts(1) != a


def test_stratified_subset_keeps_class_proportions():
    from lungcvt.train import stratified_subset

    labels = [0] * 400 + [1] * 200 + [2] * 80 + [3] * 20
    keep = stratified_subset(labels, 0.25, seed=0)
    counts = np.bincount([labels[i] for i in keep], minlength=4).tolist()
    assert counts == [100, 50, 20, 5] and keep == sorted(set(keep))
    assert stratified_subset(labels, 0.25, seed=1) != keep
    nb = get_config("lungcvt_notebook").train
    assert nb.subset_fraction == 0.25 and nb.shuffle is False and nb.lr == 1e-3 and nb.cb_beta == 0.99


def test_resume_state_is_weights_plus_adam_moments(syn_dir, tmp_path):
    """last_state.pt holds the weights and Adam's two moments (3x the weights) and small RNG/history, nothing else.
    (Trained with 2 DataLoader workers, which resize the cycles on a CPU.)"""
    from lungcvt.train import train

    cfg = get_config("lungcvt_tiny")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1, subset_fraction=0.5))
    res = train(cfg, syn_dir, tmp_path / "r", device="cpu", cache_dir=tmp_path / "c", progress=False, num_workers=2)
    st = torch.load(tmp_path / "r" / "last_state.pt", weights_only=False)
    weight_bytes = sum(v.numel() * v.element_size() for v in st["model"].values())
    moments = [t for s in st["optimizer"]["state"].values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert sum(t.numel() * t.element_size() for t in moments) == 2 * sum(
        v.numel() * v.element_size() for k, v in st["model"].items() if "running" not in k and "num_batches" not in k
    )
    size = (tmp_path / "r" / "last_state.pt").stat().st_size
    assert 2.9 * weight_bytes < size < 3.0 * weight_bytes + 200_000
    tj = json.loads((tmp_path / "r" / "train.json").read_text())
    assert tj["last_state_bytes"] == size and tj["n_train"] == sum(res.train_counts)
    assert tj["n_train"] == pytest.approx(0.5 * sum(tj["split"]["validation"]["train_counts"]), abs=4)
    assert set(st["rng"][0]) >= {"python", "numpy", "torch", "generator"}
    assert tj["data_loader"] == {"num_workers": 2, "resize": "workers"}  # on a CPU the workers resize each cycle


def test_sharded_features_give_exactly_the_files_of_one_run(syn_dir, tmp_path, capsys):
    from lungcvt.cli import main

    one, two = tmp_path / "one", tmp_path / "two"
    base = ["features", "--data", str(syn_dir), "--preset", "lungcvt_tiny", "--device", "cpu"]
    assert main(base + ["--cache", str(one)]) == 0
    assert main(base + ["--cache", str(two), "--shard", "0/2"]) == 0
    first = sorted(p.name for p in two.rglob("*.npz"))
    assert main(base + ["--cache", str(two), "--shard", "1/2"]) == 0
    files_one = sorted(p.relative_to(one) for p in one.rglob("*.npz"))
    files_two = sorted(p.relative_to(two) for p in two.rglob("*.npz"))
    assert files_one == files_two and 0 < len(first) < len(files_one)
    for rel in files_one:
        with np.load(one / rel) as a, np.load(two / rel) as b:
            assert set(a.files) == set(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert "shard 1/2" in capsys.readouterr().out
    assert main(base + ["--cache", str(two), "--shard", "2/2"]) == 2


def test_per_device_fine_tuning_starts_from_the_checkpoint(syn_dir, tmp_path):
    from lungcvt.cli import main
    from medshared.checkpoint import load_checkpoint

    cache = tmp_path / "c"
    common = ["--data", str(syn_dir), "--cache", str(cache), "--device", "cpu", "--epochs", "1"]
    assert main(["train", *common, "--out", str(tmp_path / "base"), "--preset", "lungcvt_tiny"]) == 0
    ck = tmp_path / "base" / "best.safetensors"
    yaml = tmp_path / "tiny_lr.yaml"
    yaml.write_text("train: {lr: 1e-12, warmup_steps: 0}\n")  # a step that cannot move the weights
    from lungcvt.data import load_dataset

    recs, _ = load_dataset(syn_dir)
    patients: dict[str, set] = {}
    for r in recs:
        if r.split == "train":
            patients.setdefault(r.info.device, set()).add(r.info.patient)
    dev = max(sorted(patients), key=lambda d: len(patients[d]))  # a device with >= 2 training patients
    assert len(patients[dev]) >= 2
    args = ["train", *common, "--out", str(tmp_path / "ft"), "--init", str(ck), "--devices", dev, "--config", str(yaml)]
    assert main(args + ["--allow-missing-class"]) == 0
    tj = json.loads((tmp_path / "ft" / "train.json").read_text())
    assert tj["init"] == str(ck) and tj["split"]["devices"] == [dev] and tj["config"]["name"] == "lungcvt_tiny"
    a, _, _ = load_checkpoint(ck)
    b, _, _ = load_checkpoint(tmp_path / "ft" / "best.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a if "running" not in k and "num_batches" not in k) < 1e-6
    assert main(args[:-2] + ["--preset", "lungcvt_base", "--pretrained", "none", "--allow-missing-class"]) == 2
