"""A team's own pool: recursive folders with unlabelled images, query excluding the checkpoint's labelled images,
unreadable files (all named, or skipped and listed), and streamed pools (files read batch by batch, values in
memory-mapped arrays, chunked selection equal to the in-memory result)."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from alges.cli import main
from alges.config import create_config
from alges.data import scan_images
from alges.inference import infer
from alges.model import build_model
from alges.pool import ArraySource, FileSource
from alges.query import query_pool
from alges.selection import coreset_greedy, kmeans_pp

CPU = torch.device("cpu")


def _blob_image(rng, size=40):
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    c = rng.integers(12, 28, 2)
    cv2.circle(mask, (int(c[0]), int(c[1])), int(rng.integers(5, 10)), 255, -1)
    img[mask > 0] += 120
    return img, mask


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """case folders of JPEG frames; masks for 8 of the 20 frames; a checkpoint trained on 6 of the labelled ones."""
    root = tmp_path_factory.mktemp("team")
    rng = np.random.default_rng(0)
    labelled = []
    for case in range(4):
        for f in range(5):
            img, mask = _blob_image(rng)
            rel = f"case{case}/frame_{f:03d}"
            (root / "images" / f"case{case}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / f"{rel}.jpg"), img)
            if f < 2:
                (root / "masks" / f"case{case}").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "masks" / f"{rel}.png"), mask)
                labelled.append(rel)
    lst = root / "train.txt"
    lst.write_text("\n".join(labelled[:6]) + "\n")
    out = root / "run"
    argv = ["train", "--data", str(root), "--labeled", str(lst), "--out", str(out), "--preset", "alges_tiny"]
    assert main([*argv, "--epochs", "1", "--device", "cpu"]) == 0
    return root, labelled


def test_recursive_pool_with_unlabelled_images(team):
    root, labelled = team
    items = scan_images(root)
    assert len(items) == 20 and items[0][0] == "case0/frame_000" and items[0][1].suffix == ".jpg"
    ck = json.loads((root / "run" / "train.json").read_text())
    assert ck["n_train"] == 6 and ck["config"]["num_classes"] == 2  # classes from the 0/255 masks
    assert (root / "run" / "best.safetensors").is_file()


def test_query_excludes_the_checkpoint_labelled_images(team, tmp_path, capsys):
    root, labelled = team
    out = tmp_path / "q.csv"
    argv = ["query", "--checkpoint", str(root / "run" / "model.safetensors"), "--pool", str(root), "--budget", "14"]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    picked = {r["image"] for r in csv.DictReader(out.open())}
    assert len(picked) == 14 and not picked & set(labelled[:6])  # exactly the 14 images it was not trained on
    assert "excluded 6 the checkpoint was trained on" in capsys.readouterr().out
    # budget 15 is now more than the unlabelled pool; --keep-checkpoint-labeled brings them back
    assert main([*argv[:-1], "15", "--out", str(out), "--device", "cpu"]) == 1
    assert main([*argv[:-1], "15", "--out", str(out), "--keep-checkpoint-labeled", "--device", "cpu"]) == 0


def test_unreadable_files_all_named_or_skipped(team, tmp_path, capsys):
    root, _ = team
    pool = tmp_path / "pool"
    for i, (iid, p) in enumerate(scan_images(root)[:6]):
        dst = pool / f"{iid}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes() if i not in (1, 4) else b"truncated")
    ck = str(root / "run" / "model.safetensors")
    with pytest.raises(ValueError, match=r"2 pool images could not be read:\n.*frame_001.jpg.*\n.*frame_004.jpg"):
        query_pool(ck, pool, 2, exclude_checkpoint_labeled=False, progress=False)
    out = tmp_path / "q.csv"
    argv = ["query", "--checkpoint", ck, "--pool", str(pool), "--budget", "2", "--strategy", "alges-sem"]
    assert main([*argv, "--out", str(out), "--skip-unreadable", "--keep-checkpoint-labeled", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "skipped 2 unreadable images" in text and "frame_001.jpg" in text and "frame_004.jpg" in text
    listed = (tmp_path / "q.csv.skipped.txt").read_text().splitlines()
    assert len(listed) == 2
    picked = {r["image"] for r in csv.DictReader(out.open())}
    assert not picked & {"case0/frame_001", "case0/frame_004"}
    assert not list(tmp_path.glob(".alges-embed-*"))  # the memmap folder is removed


def test_streamed_pool_equals_in_memory(team, tmp_path):
    root, _ = team
    cfg = create_config("alges_tiny", num_classes=2)
    torch.manual_seed(0)
    model = build_model(cfg)
    items = scan_images(root)
    src = FileSource([p for _, p in items], cfg.image_size, [i for i, _ in items])
    reads = []
    orig = src.batches

    def spy(positions, bs):
        for pos, x in orig(positions, bs):
            reads.append(len(x))
            yield pos, x

    src.batches = spy
    streamed = infer(model, src, cfg, CPU, ("alges-img", "coreset"), batch_size=4, workdir=tmp_path / "mm")
    assert max(reads) == 4 and sum(reads) == 20  # never more than one batch of decoded images
    emb = streamed.values["alges-img"]
    assert isinstance(emb, np.memmap) and (tmp_path / "mm" / "alges-img.npy").is_file()
    full = np.stack(
        [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (32, 32)).transpose(2, 0, 1) for _, p in items]
    )
    mem = infer(model, ArraySource(full), cfg, CPU, ("alges-img", "coreset"), batch_size=7)
    np.testing.assert_allclose(emb, mem.values["alges-img"], rtol=1e-5, atol=1e-7)
    # chunked selection on the memmap equals the in-memory selection
    a = kmeans_pp(emb, 5, seed=1, chunk=3)
    b = kmeans_pp(np.asarray(mem.values["alges-img"]), 5, seed=1)
    np.testing.assert_array_equal(a, b)
    feats = streamed.values["coreset"]
    pa, da = coreset_greedy(feats[5:], feats[:5], 4, chunk=2)
    pb, db = coreset_greedy(np.asarray(mem.values["coreset"][5:]), np.asarray(mem.values["coreset"][:5]), 4)
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_allclose(da, db, rtol=1e-6)


def test_array_source_slices_without_copy():
    imgs = np.zeros((10, 3, 8, 8), np.uint8)
    src = ArraySource(imgs)
    (pos, x), *_ = list(src.batches(np.arange(2, 6), 8))
    assert np.shares_memory(x, imgs) and pos.tolist() == [2, 3, 4, 5]
    (pos, x), *_ = list(src.batches(np.array([1, 5]), 8))
    assert x.shape[0] == 2 and pos.tolist() == [1, 5]


def test_decoding_threads_give_the_same_arrays_and_failures(team, tmp_path):
    """``--workers N``: images decoded in N threads; the arrays, the order and the unreadable-file reports are the
    same as in the main thread."""
    from alges.arrays import load_arrays
    from alges.data import open_dataset

    root, labelled = team
    idx = open_dataset(root)
    a, b = load_arrays(idx, labelled, 32, progress=False), load_arrays(idx, labelled, 32, progress=False, workers=3)
    assert a.ids == b.ids and np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    items = scan_images(root / "images")
    paths = [p for _, p in items] + [tmp_path / "missing.png", tmp_path / "also_missing.png"]
    plain, threaded = FileSource(paths, 32), FileSource(paths, 32, workers=3)
    pos = np.arange(len(paths))
    for (p1, x1), (p2, x2) in zip(plain.batches(pos, 7), threaded.batches(pos, 7), strict=True):
        assert np.array_equal(p1, p2) and np.array_equal(x1, x2)
    assert plain.failures == threaded.failures and len(plain.failures) == 2
