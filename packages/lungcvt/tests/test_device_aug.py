"""``train.device_aug``: a random stethoscope filter applied to the cached features (README "Real ICBHI")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from lungcvt.config import get_config, with_overrides
from lungcvt.device_aug import DeviceAugment, apply_filter
from lungcvt.features import compute_features

_LOWPASS = {"tilt": -2.0, "lp_fc": 600.0, "lp_s": 24.0, "hp_fc": 0.0, "hp_s": 0.0, "bump_db": 6.0, "bump_f": 300.0,
            "bump_w": 0.5}  # fmt: skip


def _cycles(sr: int) -> list[np.ndarray]:
    from lungcvt.synthetic import synth_cycle

    rng = np.random.default_rng(0)
    return [synth_cycle(k, 2.0, sr, rng).astype(np.float32) for k in (1, 2)]


@pytest.fixture(scope="module")
def feats():
    """(settings, cycles, their features) of two synthetic 2 s cycles (crackle, wheeze) at the CPU preset's rate."""
    cfg = dataclasses.replace(get_config("lungcvt_icbhi_cpu").features, repeat_seconds=2.0)
    cycles = _cycles(cfg.sample_rate)
    return cfg, cycles, compute_features(cycles, cfg)


def _filtered(y: np.ndarray, sr: int, c: dict) -> np.ndarray:
    f = torch.tensor(np.fft.rfftfreq(len(y), 1 / sr), dtype=torch.float32)
    g = DeviceAugment.gain(f, c).numpy()
    return np.fft.irfft(np.fft.rfft(y) * 10 ** (g / 20), n=len(y)).astype(np.float32)


def test_the_feature_filter_matches_features_of_filtered_audio(feats):
    """A Litt3200-like roll-off (low-pass at 600 Hz, 24 dB/octave) applied to the audio gives the features that
    :func:`apply_filter` makes from the unfiltered audio's features: the mechanism the augmentation relies on."""
    cfg, cycles, clean = feats
    sr = cfg.sample_rate
    coloured = compute_features([_filtered(y, sr, _LOWPASS) for y in cycles], cfg)
    aug = DeviceAugment(cfg)
    g = [DeviceAugment.gain(f, _LOWPASS) for f in aug.freqs]
    for x, z in zip(clean, coloured):
        mapped = apply_filter(torch.from_numpy(x), *g, aug.dct, cfg.mode).numpy()
        before = np.median(np.abs(x - z).reshape(3, -1), axis=1)
        after = np.median(np.abs(mapped - z).reshape(3, -1), axis=1)
        assert (before[1:] > 1.5).all(), before  # the filter moves the mel and CQT bands by dBs
        assert (after[1:] < 0.5).all() and (after[1:] < 0.2 * before[1:]).all(), (before, after)  # reproduced
        row_before = np.abs((z - x)[0].mean(axis=1))[:4]  # low MFCCs: the filter's cepstrum
        row_after = np.abs((z - mapped)[0].mean(axis=1))[:4]
        assert row_after.max() < 0.25 * row_before.max(), (row_before, row_after)


def test_device_augment_is_random_bounded_and_reproducible(feats):
    cfg, _, clean = feats
    x = torch.from_numpy(clean[0]).half()
    aug = DeviceAugment(cfg, p=1.0)
    torch.manual_seed(0)
    a, b = aug(x), aug(x)
    torch.manual_seed(0)
    a2 = aug(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, a2) and not torch.equal(a, b)  # torch's global RNG: reproducible, different per call
    for y in (a, b):
        spec = y[1:].float()
        assert float(spec.max()) == 0.0 and float(spec.min()) >= -80.0  # re-referenced and floored like the input
        assert float((y.float() - x.float()).abs().max()) > 1.0
    assert torch.equal(DeviceAugment(cfg, p=0.0)(x), x)
    with pytest.raises(ValueError, match="device_aug"):
        with_overrides(get_config("lungcvt_icbhi_cpu"), {"train": {"device_aug": 1.5}})


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_train_loader_applies_device_aug_only_when_set(p, feats):
    from lungcvt.dataset import CycleSet
    from lungcvt.loaders import build_train_loader

    cfg = with_overrides(
        get_config("lungcvt_icbhi_cpu"),
        {"train": {"device_aug": p, "time_roll": False, "shuffle": False, "batch_size": 4}},
    )
    cs = CycleSet(feats=[f.astype(np.float16) for f in feats[2]] * 2, labels=[0, 1, 2, 3])
    dl, _ = build_train_loader(cs, cfg, None, torch.Generator().manual_seed(0))
    x, lens, _ = next(iter(dl))
    same = all(torch.equal(x[i, ..., : lens[i]], torch.from_numpy(cs.feats[i])) for i in range(4))
    assert same == (p == 0.0)


def test_device_views_repeat_the_validation_cycles_through_seeded_filters(feats):
    from lungcvt.dataset import CycleSet
    from lungcvt.device_aug import with_device_views

    cfg, _, clean = feats
    cs = CycleSet(feats=[f.astype(np.float16) for f in clean], labels=[1, 2], stems=["a", "b"], devices=["X", "Y"])
    torch.manual_seed(5)
    state = torch.get_rng_state()
    v = with_device_views(cs, cfg, 3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG is left where it was
    assert len(v) == 8 and v.labels == [1, 2] * 4 and v.devices == ["X", "Y"] * 4 and len(cs) == 2
    assert all(np.array_equal(a, b) for a, b in zip(v.feats[:2], cs.feats))
    assert not any(np.array_equal(v.feats[i], v.feats[i % 2]) for i in range(2, 8))  # every copy filtered
    w = with_device_views(cs, cfg, 3, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(v.feats, w.feats))  # reproducible from the seed
    assert with_device_views(cs, cfg, 0, seed=7) is cs


@pytest.mark.parametrize("p", [0.0, None])
def test_preset_training_filters_its_training_cycles_only(syn_dir, tmp_path, monkeypatch, p):
    """One epoch of the CPU preset on synthetic data: with its defaults a share of the training cycles (at most one
    call each) and every one of the 4 filtered copies of each validation cycle go through the filter; with
    ``device_aug: 0, bias_views: 0`` (the old recipe) nothing does."""

    import json

    import lungcvt.device_aug as da
    from lungcvt.splits import DataOptions
    from lungcvt.train import train

    calls: list[int] = []
    real = da.apply_filter

    def spy(feat, *args, **kwargs):
        calls.append(int(feat.shape[-1]))
        return real(feat, *args, **kwargs)

    monkeypatch.setattr(da, "apply_filter", spy)
    over = {"train": {"epochs": 1}, "features": {"repeat_seconds": 1.0}}
    if p is not None:
        over["train"].update(device_aug=p, bias_views=0)
    cfg = with_overrides(get_config("lungcvt_icbhi_cpu"), over)
    assert cfg.train.device_aug == (0.8 if p is None else 0.0)
    opts = DataOptions(allow_missing_class=True)
    train(cfg, syn_dir, tmp_path / "r", data=opts, device="cpu", cache_dir=tmp_path / "c", progress=False)
    tj = json.loads((tmp_path / "r" / "train.json").read_text())
    if p == 0.0:
        assert calls == []
    else:  # 4 copies of each validation cycle, and p = 0.8 per training cycle: 40-100 % of them for any seed
        k = len(calls) - 4 * tj["n_val"]
        assert 0.4 * tj["n_train"] <= k <= tj["n_train"], (len(calls), tj["n_train"], tj["n_val"])


def test_validation_scores_choose_the_epoch_on_clean_cycles_and_the_bias_on_all():
    """``train.bias_views`` / ``train.min_normal_bias``: the selection score is the clean validation cycles' own
    (at their tuned bias); the stored bias is tuned over clean + copies, and floored."""
    from lungcvt.scoring import apply_normal_bias, icbhi_score, tune_normal_bias
    from lungcvt.validation import validation_scores

    rng = np.random.default_rng(0)
    y_clean = rng.integers(0, 4, 60)
    z_clean = rng.normal(0, 1, (60, 4)) + 2.0 * np.eye(4)[y_clean]  # informative logits
    z_copy = z_clean.copy()
    z_copy[:, 1:] += 1.5  # the copies' abnormal logits shifted up, as on an unseen device
    y_all, z_all = np.concatenate([y_clean, y_clean]), np.concatenate([z_clean, z_copy])
    b_clean, s_clean = tune_normal_bias(y_clean, z_clean)
    b_all = tune_normal_bias(y_all, z_all)[0]
    assert b_all > b_clean  # the shifted copies ask for a larger normal bias
    sc = validation_scores(y_all.tolist(), z_all, 60, tune_bias=True)
    assert sc["clean_bias"] == b_clean and sc["icbhi"]["score"] == pytest.approx(s_clean)
    assert sc["normal_bias"] == b_all
    assert sc["val_at_bias"]["score"] == pytest.approx(
        icbhi_score(y_clean, apply_normal_bias(z_clean, b_all).argmax(1))
    )
    # no copies: the stored bias is the clean one unless the floor lifts it
    z_neg = z_clean.copy()
    z_neg[:, 0] += 3.0  # the normal class over-scored: the tuned bias is negative
    b_neg = tune_normal_bias(y_clean, z_neg)[0]
    assert b_neg < 0
    assert validation_scores(y_clean.tolist(), z_neg, 60, tune_bias=True)["normal_bias"] == b_neg
    floored = validation_scores(y_clean.tolist(), z_neg, 60, tune_bias=True, min_bias=0.0)
    assert floored["normal_bias"] == 0.0 and floored["clean_bias"] == b_neg
    assert validation_scores(y_clean.tolist(), z_neg, 60, tune_bias=False, min_bias=0.0)["normal_bias"] == 0.0


def _row_power_db(f: np.ndarray) -> np.ndarray:
    """[3, F, T] dB maps -> [2, F]: each mel / CQT row's mean power over time in dB (noise fluctuations average)."""
    return 10.0 * np.log10(np.mean(10.0 ** (f[1:] / 10.0), axis=-1))


def test_the_noise_floor_matches_features_of_audio_with_noise_added(feats):
    """White noise added to the audio (0.3 of the peak amplitude) gives, on the mel and CQT channels, the row powers
    and the cells :func:`add_noise_floor` makes from the clean features with one flat level fitted: the power
    addition and the re-referencing to the new maximum are right."""
    from lungcvt.device_aug import add_noise_floor

    cfg, cycles, clean = feats
    rng = np.random.default_rng(3)
    aug = DeviceAugment(cfg)
    for y, x in zip(cycles, clean):
        w = rng.standard_normal(len(y)).astype(np.float32) * 0.3 * float(np.abs(y).max())
        z = compute_features([y + w], cfg)[0]
        pz = _row_power_db(z)

        def err(level: float, x=x, pz=pz) -> float:
            n = [torch.full((len(f),), float(level)) for f in aug.freqs]
            mapped = add_noise_floor(torch.from_numpy(x), *n, aug.dct, cfg.mode).numpy()
            return float(np.median(np.abs(_row_power_db(mapped) - pz)))

        best = min(np.arange(-60.0, -5.0, 1.0), key=err)  # the one free parameter: the level re. the maximum
        before = float(np.median(np.abs(_row_power_db(x) - pz)))
        assert before > 2.5, before  # the noise fills the quiet rows by dBs
        assert err(best) < 0.25 * before, (best, before, err(best))
        n = [torch.full((len(f),), float(best)) for f in aug.freqs]
        mapped = add_noise_floor(torch.from_numpy(x), *n, aug.dct, cfg.mode).numpy()
        cells_before, cells_after = np.median(np.abs(x - z)[1:]), np.median(np.abs(mapped - z)[1:])
        assert cells_after < 0.35 * cells_before, (cells_before, cells_after)  # cell by cell too, up to noise
        assert np.median(np.abs(mapped - z)[0]) < np.median(np.abs(x - z)[0])  # the MFCCs move toward it
        assert -50.0 < best < -10.0, best


def test_device_noise_draws_nothing_when_off_and_raises_the_floor_when_on(feats):
    cfg, _, clean = feats
    x = torch.from_numpy(clean[0])
    torch.manual_seed(5)
    start = torch.get_rng_state()
    assert DeviceAugment(cfg, p=0.0, noise=0.0)(x) is x
    assert torch.equal(torch.get_rng_state(), start)  # off: no draw at all
    aug = DeviceAugment(cfg, p=1.0, noise=0.0)
    torch.manual_seed(5)
    aug(x)
    after_call = torch.get_rng_state()
    torch.manual_seed(5)
    torch.rand(())  # the draw for p
    aug.sample_curve()  # the filter's draws
    # noise 0 adds no draw after the filter's: the preset's runs (device_aug only) are what they were
    assert torch.equal(after_call, torch.get_rng_state())
    torch.manual_seed(5)
    noisy = DeviceAugment(cfg, p=0.0, noise=1.0)(x)
    assert noisy.shape == x.shape and noisy.dtype == x.dtype
    assert float(noisy[1].min()) > float(x[1].min()) + 10.0  # the quietest cells now sit at the noise floor
    assert float(noisy[1].min()) > -50.0  # the floor is at most 45 dB (+ its tilt) below the maximum
    assert float(noisy[1].max()) == 0.0  # re-referenced to the new maximum
    with pytest.raises(ValueError, match="noise"):
        DeviceAugment(cfg, noise=1.5)
    with pytest.raises(ValueError, match="device_noise"):
        with_overrides(get_config("lungcvt_icbhi_cpu"), {"train": {"device_noise": -0.1}})
