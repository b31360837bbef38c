"""Stage 1a: image-folder loader (DDTI masks as stored, empty-mask policy), annotated frames decoded once with
memory flat in the number of videos, the detector recipe (FrozenBN, trainable stages, local ImageNet / COCO weights,
downloads through torch.hub's cache on 127.0.0.1), resume equal to an uninterrupted run, evaluate-detector's
fixed-box chance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kfgnet.data import DataError, read_manifest
from kfgnet.detection_data import (
    DetectionDataset,
    extract_annotated_frames,
    median_box,
    read_image_folder,
    split_by_case,
)
from kfgnet.presets import get_detector_config


def _ddti() -> Path:
    from medshared.testing import shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "ddti" / "mask").is_dir():
        pytest.skip("../shared/data/ddti absent (a user's clone has no shared data)")
    return root / "ddti"


def test_ddti_masks_to_boxes_and_empty_mask_policy(caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image

    root = _ddti()
    with caplog.at_level("WARNING", logger="kfgnet"):
        items = read_image_folder(root)
    assert len(items) == 535 and len({it.case for it in items}) == 304
    empty = [it for it in items if len(it.boxes) == 0]
    assert len(empty) == 6 and "6 empty mask(s)" in caplog.text and "background-only" in caplog.text
    assert len(read_image_folder(root, empty_masks="skip")) == 529
    with pytest.raises(DataError, match=r"337_3\(1\).gif is empty.*--empty-masks"):
        read_image_folder(root, empty_masks="error")
    it = next(i for i in items if i.path.stem == "100_1(2)")
    m = np.asarray(Image.open(root / "mask" / "100_1(2).gif").convert("L")) > 0
    ys, xs = np.nonzero(m)
    np.testing.assert_array_equal(it.boxes, [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    assert it.case == "100"
    parts = split_by_case(items, (0.7, 0.15, 0.15), seed=0)
    cases = [{i.case for i in parts[k]} for k in ("train", "val", "test")]
    assert not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    mb = median_box(parts["train"])
    assert mb.shape == (4,) and 0 <= mb[0] < mb[2] <= 300


def _folder(tmp: Path, masks: dict[str, np.ndarray], mode: str = "L") -> Path:
    from PIL import Image

    (tmp / "image").mkdir(parents=True)
    (tmp / "mask").mkdir()
    for name, m in masks.items():
        Image.fromarray(np.full((20, 24), 100, np.uint8)).save(tmp / "image" / f"{name}.png")
        if mode == "P":  # palette mask: index 1 shown as white
            im = Image.fromarray(m.astype(np.uint8), mode="P")
            im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
            im.save(tmp / "mask" / f"{name}.gif")
        else:
            Image.fromarray(m.astype(np.uint8)).save(tmp / "mask" / f"{name}.png")
    return tmp


def test_masks_read_as_stored(tmp_path: Path) -> None:
    m = np.zeros((20, 24), np.uint8)
    m[3:9, 5:15] = 1  # palette index 1 (white): a nodule, not background
    items = read_image_folder(_folder(tmp_path / "p", {"7_1": m}, mode="P"))
    np.testing.assert_array_equal(items[0].boxes, [[5, 3, 15, 9]])
    two = np.zeros((20, 24), np.uint8)
    two[2:5, 2:5] = 255
    two[10:15, 12:20] = 255
    assert len(read_image_folder(_folder(tmp_path / "c", {"1_1": two}), mask_components=True)[0].boxes) == 2
    three = two.copy()
    three[0, 0] = 128
    with pytest.raises(DataError, match="holds the values 0, 128, 255.*Binarise"):
        read_image_folder(_folder(tmp_path / "t", {"1_1": three}))
    (tmp_path / "b" / "image").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "b" / "image" / "9_1.png")
    (tmp_path / "b" / "boxes.csv").write_text("image,x1,y1,x2,y2\n9_1.png,1,2,10,12\n9_1.png,3,3,5,6\n")
    b = read_image_folder(tmp_path / "b")
    assert b[0].boxes.shape == (2, 4) and b[0].case == "9"
    x, t = DetectionDataset(b)[0]
    assert x.shape == (3, 20, 24) and t["labels"].tolist() == [1, 1]  # grey repeated over 3 channels


def test_annotated_frames_decoded_once_memory_flat(synth: Path, tmp_path: Path) -> None:
    """Only annotated frames are written (a PNG each), nothing is kept: the extraction's peak traced memory is about
    one decoded frame, the same for 2 and for 8 videos, and the dataset holds paths, not arrays."""
    import tracemalloc

    recs = read_manifest(synth)
    many = recs * 3  # 18 videos (same files, separate cache folders per call below)
    peaks = []
    for n, sub in ((2, "a"), (len(many), "b")):
        tracemalloc.start()
        items = extract_annotated_frames(many[:n], tmp_path / sub, max_per_video=4)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert all(isinstance(it.path, Path) and it.path.is_file() for it in items)
    assert peaks[1] < 1.5 * peaks[0] + 200_000, peaks
    frame_bytes = 64 * 64 * 3
    assert peaks[0] < 40 * frame_bytes  # far below one video held whole (24-30 frames + copies)
    ds = DetectionDataset(items)
    assert not any(isinstance(v, np.ndarray) and v.size > 16 for it in ds.items for v in vars(it).values())


def test_detector_recipe_frozen_bn_and_local_weights(tmp_path: Path) -> None:
    """With pretrained weights: FrozenBatchNorm2d and 3 trainable stages (torchvision's recipe); a local ImageNet
    backbone file and a local COCO detector file load (all but the 91-class predictor)."""
    from kfgnet.detector import build_detector
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    coco = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(coco, tmp_path / "coco.pth")
    # an ImageNet mobilenet_v3_large file holds the same body under "features.<i>" (+ a classifier, ignored)
    ref = {k.replace("backbone.body.", "features."): v for k, v in coco.items() if k.startswith("backbone.body.")}
    torch.save({**ref, "classifier.0.weight": torch.zeros(2, 960)}, tmp_path / "mnv3.pth")
    cfg = get_detector_config(
        "mobilenet_v3_fpn", pretrained_backbone=str(tmp_path / "mnv3.pth"), min_size=64, max_size=64
    )
    assert cfg.frozen_bn and cfg.trainable_layers == 3
    m = build_detector(cfg)
    assert any(isinstance(x, FrozenBatchNorm2d) for x in m.backbone.modules())
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.backbone.modules())
    torch.testing.assert_close(m.backbone.body["0"][0].weight, ref["features.0.0.weight"])
    assert not m.backbone.body["0"][0].weight.requires_grad  # early stages frozen
    scratch = get_detector_config("mobilenet_v3_fpn")
    assert not scratch.frozen_bn and scratch.trainable_layers == 5  # from scratch: trainable BN, every stage
    mc = build_detector(
        get_detector_config("mobilenet_v3_fpn", weights=str(tmp_path / "coco.pth"), min_size=64, max_size=64)
    )
    torch.testing.assert_close(mc.rpn.head.conv[0][0].weight, coco["rpn.head.conv.0.0.weight"])
    assert mc.roi_heads.box_predictor.cls_score.out_features == 2
    with pytest.raises(FileNotFoundError, match="--pretrained-backbone none"):
        build_detector(get_detector_config("resnet50_fpn", pretrained_backbone=str(tmp_path / "none.pth")))


def test_weights_download_through_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A named checkpoint downloads from the (loopback) URL into torch.hub's cache, hash checked, once; offline
    without the file: the error names the file, the URL and the random-init flag."""
    import kfgnet.weights as KW
    from medshared.testing import serve_files
    from medshared.weights import WeightsUnavailable

    assert KW.weights_url("resnet50", "imagenet")[0].startswith("https://download.pytorch.org/models/resnet50-")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KFGNET_WEIGHTS_DIR", raising=False)
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEDREPRO_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    srv = tmp_path / "srv"
    srv.mkdir()
    torch.save({"w": torch.ones(2)}, srv / "x.pth")
    name = f"r3d_18-{hashlib.sha256((srv / 'x.pth').read_bytes()).hexdigest()[:8]}.pth"
    (srv / "x.pth").rename(srv / name)
    with serve_files(srv) as url:
        monkeypatch.setattr(KW, "weights_url", lambda net, n: (f"{url}/{name}", "Kinetics-400 R3D-18 weights"))
        p = KW.resolve_weights("kinetics", "r3d_18", "pass --pretrained none")
        assert p == tmp_path / "home" / "hub" / "checkpoints" / name and url.requests == [f"/{name}"]
        assert KW.resolve_weights("kinetics", "r3d_18", "pass --pretrained none") == p
        assert url.requests == [f"/{name}"]  # second call from the cache
    p.unlink()
    with pytest.raises(WeightsUnavailable, match=rf"{name}.*offline.*--pretrained none"):
        KW.resolve_weights("kinetics", "r3d_18", "pass --pretrained none", offline=True)


def test_detector_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kfgnet.detector_train as DT
    from kfgnet.detection_data import DetectionItem
    from kfgnet.runstate import StaleRunError
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        img = rng.integers(0, 60, (64, 64), dtype=np.uint8)
        x, y = 8 + 4 * i, 10 + 3 * i
        img[y : y + 20, x : x + 24] = 220
        Image.fromarray(img).save(tmp_path / f"{i}_1.png")
        items.append(DetectionItem(tmp_path / f"{i}_1.png", np.array([[x, y, x + 24, y + 20]], np.float32), str(i)))
    cfg = get_detector_config("tiny", min_size=64, max_size=64, epochs=2, batch_size=4)
    full = DT.train_detector(items[:4], items[4:], cfg, tmp_path / "full", seed=1, progress=False)
    calls = {"n": 0}
    real = DT.save_detector

    def crash_in_epoch_2(path: Path, *a: object, **k: object) -> None:
        if path.name == "detector_last.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # killed during epoch 2, before its state was written
        real(path, *a, **k)

    monkeypatch.setattr(DT, "save_detector", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        DT.train_detector(items[:4], items[4:], cfg, tmp_path / "res", seed=1, progress=False)
    monkeypatch.setattr(DT, "save_detector", real)
    assert torch.load(tmp_path / "res" / "detector.state.pt", weights_only=False)["epoch"] == 1
    resumed = DT.train_detector(items[:4], items[4:], cfg, tmp_path / "res", seed=1, progress=False)
    assert [r["epoch"] for r in resumed["log"]] == [1, 2]
    a = torch.load(tmp_path / "full" / "detector.state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "res" / "detector.state.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert full["log"][1]["val_ap50"] == pytest.approx(resumed["log"][1]["val_ap50"])
    with pytest.raises(StaleRunError, match="--restart"):
        DT.train_detector(
            items[:4],
            items[4:],
            get_detector_config("tiny", min_size=64, max_size=64, epochs=3, batch_size=4),
            tmp_path / "res",
            progress=False,
        )


def test_evaluate_detector_headline_with_fixed_box_chance(tmp_path: Path) -> None:
    """train-detector + evaluate-detector on 30 DDTI images (tiny network, 1 epoch): metrics.json has COCO AP / AP50 /
    AP75 of the detector and of the training set's median box, whose COCO AP is the headline's chance."""
    from kfgnet.cli import main

    root = _ddti()
    sub = tmp_path / "ddti"
    (sub / "image").mkdir(parents=True)
    (sub / "mask").mkdir()
    for p in sorted((root / "image").iterdir())[:30]:
        (sub / "image" / p.name).symlink_to(p)
        (sub / "mask" / f"{p.stem}.gif").symlink_to(root / "mask" / f"{p.stem}.gif")
    (tmp_path / "c.yaml").write_text("detector: {min_size: 96, max_size: 96}\n")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train-detector",
                "--data",
                str(sub),
                "--preset",
                "tiny",
                "--epochs",
                "1",
                "--config",
                str(tmp_path / "c.yaml"),
                "--out",
                str(run),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    split = json.loads((run / "split.json").read_text())
    assert not set(split["cases"]["test"]) & set(split["cases"]["train"])
    assert (
        main(
            [
                "evaluate-detector",
                "--checkpoint",
                str(run / "detector_best.safetensors"),
                "--data",
                str(sub),
                "--split",
                str(run / "split.json"),
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["headline"]["metric"] == "coco_ap" and m["headline"]["chance"] == m["fixed_box"]["ap"]
    assert m["n_images"] == split["n_images"]["test"]
    assert set(m["detector"]) >= {"ap", "ap50", "ap75", "hit50"} and m["fixed_box"]["hit50"] > 0.5
    assert (tmp_path / "eval" / "detections.png").is_file() and (tmp_path / "eval" / "detections.csv").is_file()


def test_read_image_rgb_channels(tmp_path: Path) -> None:
    import cv2
    from kfgnet.detection_data import read_image_rgb

    bgra = np.zeros((6, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 255  # blue 10, red 200, opaque
    cv2.imwrite(str(tmp_path / "opaque.png"), bgra)
    rgb = read_image_rgb(tmp_path / "opaque.png")
    assert rgb.shape == (6, 5, 3) and rgb[0, 0].tolist() == [200, 0, 10]
    bgra[2, 3, 3] = 128
    cv2.imwrite(str(tmp_path / "translucent.png"), bgra)
    with pytest.raises(DataError, match="translucent.png has a translucent alpha"):
        read_image_rgb(tmp_path / "translucent.png")
    cv2.imwrite(str(tmp_path / "grey16.png"), np.full((4, 4), 1000, np.uint16))
    with pytest.raises(DataError, match="grey16.png is uint16"):
        read_image_rgb(tmp_path / "grey16.png")
