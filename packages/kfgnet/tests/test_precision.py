"""--precision, --sync-bn and --workers reach the training configs; kfgnet's CPU probes; bf16 on the detector backbone
only (heads and box coding in fp32); a bf16 detector state is not resumed in fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kfgnet.cli import build_parser


class _Stop(Exception):
    pass


def _capture_classifier(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Any:
    """The ClassifierTrainConfig that ``train-classifier argv`` hands to cross_validate."""
    import kfgnet.train as T
    from kfgnet.cmd_stage2 import cmd_train_classifier

    seen: dict[str, Any] = {}

    def fake_cv(records: Any, cfg: Any, tcfg: Any, *a: Any, **k: Any) -> None:
        seen["tcfg"] = tcfg
        raise _Stop

    monkeypatch.setattr(T, "cross_validate", fake_cv)
    with pytest.raises(_Stop):
        cmd_train_classifier(build_parser().parse_args(["train-classifier", *argv]))
    return seen["tcfg"]


def test_classifier_flags_reach_the_training_config(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    base = ["--manifest", str(synth), "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]
    t = _capture_classifier(monkeypatch, [*base, "--sync-bn", "--num-workers", "2", "--precision", "bf16"])
    assert t.sync_bn and t.num_workers == 2 and t.bf16 and t.channels_last
    assert "classifier precision: bf16 (bf16 asked" in capsys.readouterr().out
    t = _capture_classifier(monkeypatch, [*base, "--workers", "0", "--precision", "fp32"])
    assert not t.sync_bn and t.num_workers == 0 and not t.bf16 and not t.channels_last  # the plain reference
    t = _capture_classifier(monkeypatch, [*base, "--precision", "tf32"])
    assert not t.bf16 and t.channels_last and t.num_workers == 0  # no TF32 on a CPU: fp32; 0 workers on a CPU
    assert "no TF32 on cpu" in capsys.readouterr().out
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {bf16: true, num_workers: 3}\n")
    t = _capture_classifier(monkeypatch, [*base, "--config", str(cfg)])
    assert t.bf16 and t.num_workers == 3  # train.bf16 is an alias of --precision bf16; the config's workers kept
    from kfgnet.cmd_stage2 import cmd_train_classifier

    with pytest.raises(ValueError, match="train.bf16 .* asks for bf16 but --precision is fp32"):
        cmd_train_classifier(
            build_parser().parse_args(["train-classifier", *base, "--config", str(cfg), "--precision", "fp32"])
        )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-classifier", *base, "--precision", "fp16"])  # argparse names the choices


def test_detector_flags_reach_train_detector(synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kfgnet.detector_train as DT
    from kfgnet.cmd_stage1 import cmd_train_detector

    seen: dict[str, Any] = {}

    def fake_train(
        train: Any,
        val: Any,
        cfg: Any,
        out: Any,
        ctx: Any,
        seed: int,
        restart: bool,
        progress: bool,
        offline: bool,
        workers: int,
        sync_bn: bool,
        meta: Any = None,
        precision: Any = None,
    ) -> None:
        seen.update(workers=workers, sync_bn=sync_bn, precision=precision)
        raise _Stop

    monkeypatch.setattr(DT, "train_detector", fake_train)
    argv = ["train-detector", "--manifest", str(synth), "--out", str(tmp_path / "d"), "--preset", "tiny",
            "--images-per-video", "1", "--device", "cpu", "--no-progress", "--sync-bn", "--num-workers", "1",
            "--precision", "bf16"]  # fmt: skip
    with pytest.raises(_Stop):
        cmd_train_detector(build_parser().parse_args(argv))
    assert seen["workers"] == 1 and seen["sync_bn"] and seen["precision"].name == "bf16"


def test_cpu_auto_measures_kfgnet_probes_once_then_reads_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medshared.precision as MP
    from kfgnet.precision import CLASSIFIER_KEY, DETECTOR_KEY, classifier_precision, detector_precision

    monkeypatch.setenv("MEDREPRO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("medshared.runtime.native_bf16", lambda device="cpu": True)  # measure on any CPU
    real = MP.measure_probe
    monkeypatch.setattr(MP, "measure_probe", lambda probe: real(probe, budget_s=0.5, min_runs=1))  # quick here
    p1 = detector_precision("auto", "cpu")
    assert p1.name in ("fp32", "bf16") and "measured" in p1.reason and DETECTOR_KEY in p1.reason
    assert "cached" in detector_precision("auto", "cpu").reason
    from kfgnet.presets import get_detector_config

    p2 = detector_precision("auto", "cpu", cfg=get_detector_config("tiny"))  # another backbone: its own measurement
    assert f"{DETECTOR_KEY}.tiny" in p2.reason and "measured" in p2.reason and f"{DETECTOR_KEY}.small" in p1.reason
    monkeypatch.setenv("MEDREPRO_PRECISION", "fp32")
    p = classifier_precision("auto", "cpu")
    assert p.name == "fp32" and "MEDREPRO_PRECISION" in p.reason
    assert CLASSIFIER_KEY == "kfgnet.c3d_train"


def test_probes_run_in_fp32_and_under_bf16_autocast() -> None:
    from kfgnet.precision import c3d_probe, detector_probe

    for make in (c3d_probe, detector_probe):
        probe = make()
        probe()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probe()


def _tiny_detector() -> Any:
    from kfgnet.detector import build_detector
    from kfgnet.presets import get_detector_config

    torch.manual_seed(0)
    return build_detector(get_detector_config("tiny", min_size=64, max_size=64))


def test_backbone_autocast_keeps_heads_and_boxes_in_fp32() -> None:
    from kfgnet.precision import backbone_autocast, fixed_precision

    model = _tiny_detector().eval()
    keys = list(model.state_dict())
    seen: list[torch.dtype] = []
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    head_in: list[torch.dtype] = []
    model.rpn.head.register_forward_hook(lambda m, i, o: head_in.append(i[0][0].dtype))
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad(), backbone_autocast(model, fixed_precision("bf16")):
        out = model(x)
    assert seen == [torch.bfloat16] and head_in == [torch.float32] and out[0]["boxes"].dtype == torch.float32
    assert "forward" not in model.backbone.__dict__ and list(model.state_dict()) == keys  # restored, same keys
    with torch.no_grad(), backbone_autocast(model, fixed_precision("fp32")):
        model(x)
    assert seen[-1] == torch.float32


def test_detector_trains_in_bf16_and_refuses_to_resume_in_fp32(tmp_path: Path, detection_items: list) -> None:
    import json

    from kfgnet.detector_train import train_detector
    from kfgnet.precision import fixed_precision
    from kfgnet.presets import get_detector_config
    from kfgnet.runstate import StaleRunError

    items = detection_items
    cfg = get_detector_config("tiny", min_size=64, max_size=64, epochs=1, batch_size=2)
    res = train_detector(items[:3], items[3:], cfg, tmp_path / "run", seed=0, progress=False,
                         precision=fixed_precision("bf16"))  # fmt: skip
    assert res["precision"]["name"] == "bf16" and np.isfinite(res["log"][0]["loss"])
    assert json.loads((tmp_path / "run" / "train.json").read_text())["precision"]["name"] == "bf16"
    with pytest.raises(StaleRunError):
        train_detector(items[:3], items[3:], cfg, tmp_path / "run", seed=0, progress=False)  # fp32 now
