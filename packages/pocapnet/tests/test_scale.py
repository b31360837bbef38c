"""Scale: extraction resumes inside an operation, shards give exactly one run's files, prefetch, and splits that
keep augmented copies with their operation."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
from pocapnet.cli import main
from pocapnet.data import load_operation
from pocapnet.extractors import AudioExtractor, XrayExtractor
from pocapnet.features import extract_operation
from pocapnet.splits import is_augmented, original_of, split_operations
from pocapnet.synthetic import make_synthetic_dataset
from pocapnet.train import prefetch
from pocapnet.weights import load_densenet, load_wav2vec2


class _Interrupt(Exception):
    pass


class _CountingXray(XrayExtractor):
    def __init__(self, *a, fail_at: int | None = None, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, frames):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise _Interrupt("power cut")
        return super().__call__(frames)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_extraction_resumes_inside_an_operation(tmp_path, tiny_cfg):
    make_synthetic_dataset(tmp_path / "d", n_ops=1, seconds=(10, 10), seed=8, frame_size=32, progress=False)
    fcfg = dataclasses.replace(tiny_cfg.features, chunk_s=3, bf16=False)
    op = load_operation(tmp_path / "d", "OP_001")
    audio = AudioExtractor(load_wav2vec2("tiny-random"), fcfg)
    n_chunks = 4  # 3 + 3 + 3 + 1 s
    full = _CountingXray(load_densenet("tiny-random"), fcfg)
    extract_operation(op, tmp_path / "a", audio, full, fcfg, {"id": 1}, progress=False)
    assert full.calls == n_chunks
    cut = _CountingXray(load_densenet("tiny-random"), fcfg, fail_at=3)
    with pytest.raises(_Interrupt):
        extract_operation(op, tmp_path / "b", audio, cut, fcfg, {"id": 1}, progress=False)
    prog = json.loads((tmp_path / "b" / "progress.json").read_text())
    assert prog["done"] == [0, 1] and not (tmp_path / "b" / "meta.json").exists()
    resumed = _CountingXray(load_densenet("tiny-random"), fcfg)
    extract_operation(op, tmp_path / "b", audio, resumed, fcfg, {"id": 1}, progress=False)
    assert resumed.calls == n_chunks - 2  # only the unfinished chunks were computed again
    assert (
        _files(tmp_path / "a")
        == _files(tmp_path / "b")
        == ["ch1.npy", "ch2.npy", "ch3.npy", "labels.npy", "meta.json", "xray.npy"]
    )
    for name in ("xray.npy", "ch1.npy", "ch3.npy", "labels.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name))
    # other settings or other weights restart the operation instead of mixing chunks
    again = _CountingXray(load_densenet("tiny-random"), fcfg, fail_at=2)
    with pytest.raises(_Interrupt):
        extract_operation(op, tmp_path / "c", audio, again, fcfg, {"id": 1}, progress=False)
    other = _CountingXray(load_densenet("tiny-random"), fcfg)
    extract_operation(op, tmp_path / "c", audio, other, fcfg, {"id": 2}, progress=False)
    assert other.calls == n_chunks
    # so does another precision: bf16 chunks are never continued in fp32 (the precision is part of the plan)
    bf = _CountingXray(load_densenet("tiny-random"), fcfg, fail_at=3)
    with pytest.raises(_Interrupt):
        extract_operation(op, tmp_path / "p", audio, bf, fcfg, {"id": 1}, progress=False, precision={"name": "bf16"})
    fp = _CountingXray(load_densenet("tiny-random"), fcfg)
    extract_operation(op, tmp_path / "p", audio, fp, fcfg, {"id": 1}, progress=False, precision={"name": "fp32"})
    assert fp.calls == n_chunks
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["precision"] == {"name": "fp32"}


def test_two_shards_give_exactly_the_files_of_one_run(tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(data, n_ops=3, seconds=(8, 9), seed=7, frame_size=32, progress=False)
    common = ["--data", str(data), "--preset", "pocapnet_tiny", "--fp32", "--device", "cpu"]
    assert main(["extract", "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["extract", "--out", str(tmp_path / "sharded"), "--shard", "0/2", *common]) == 0
    assert _files(tmp_path / "sharded") == [
        f"OP_00{i}/{f}"
        for i in (1, 3)
        for f in ("ch1.npy", "ch2.npy", "ch3.npy", "labels.npy", "meta.json", "xray.npy")
    ]
    assert main(["extract", "--out", str(tmp_path / "sharded"), "--shard", "1/2", *common]) == 0
    assert _files(tmp_path / "one") == _files(tmp_path / "sharded")  # each operation exactly once, no merge step
    for f in _files(tmp_path / "one"):
        a, b = tmp_path / "one" / f, tmp_path / "sharded" / f
        if f.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b))
        else:
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
            ma.pop("extract_seconds"), mb.pop("extract_seconds")
            assert ma == mb
    assert main(["extract", "--out", str(tmp_path / "x"), "--shard", "2/2", *common]) == 1


def test_prefetch_keeps_order_propagates_errors_and_stops():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetch(iter(range(5)), depth=0)) == list(range(5))

    def bad():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(bad(), depth=2))
    before = set(threading.enumerate())
    g = prefetch(iter(range(1000)), depth=2)
    next(g)
    mine = [t for t in threading.enumerate() if t not in before and t.name == "pocapnet-prefetch"]
    assert len(mine) == 1 and mine[0].is_alive()
    g.close()  # the consumer stops early: the producer thread ends (only this generator's thread is looked at, so
    # threads that other tests' pools start or end meanwhile cannot make this flaky)
    mine[0].join(timeout=5)
    assert not mine[0].is_alive()


def test_prefetch_map_with_several_workers_keeps_order_and_errors():
    import time

    from pocapnet.loop import prefetch_map

    def slow(x: int) -> int:
        time.sleep(0.002 * (x % 3))  # later items finish first
        return x * x

    assert list(prefetch_map(slow, range(20), workers=3, depth=2)) == [x * x for x in range(20)]
    assert list(prefetch_map(slow, range(5), workers=0)) == [0, 1, 4, 9, 16]

    def bad(x: int) -> int:
        if x == 4:
            raise OSError("disk gone")
        return x

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch_map(bad, range(10), workers=2))
    seen: list[int] = []
    g = prefetch_map(seen.append, range(1000), workers=2, depth=2)
    next(g)
    g.close()  # stopped early: the rest is cancelled, the pool's threads end
    assert len(seen) < 10


def test_splits_keep_augmented_copies_with_their_operation(tiny_cfg, tmp_path):
    assert original_of("OP_012A") == "OP_012" and original_of("OP_012A2") == "OP_012" and original_of("OP_A") == "OP_A"
    assert is_augmented("OP_003A") and not is_augmented("OP_003")
    ops = [f"OP_{i:03d}" for i in range(1, 11)]
    copies = [f"{o}A" for o in ops[::2]]
    s = split_operations(ops + copies, tiny_cfg)
    part = {o: k for k in ("train", "val", "test") for o in s[k]}
    for c in copies:
        orig = original_of(c)
        assert part.get(c) == "train" if part[orig] == "train" else c in s["held_out_augmented"]
    assert [k for k in ("train", "val", "test") if set(s[k]) & set(copies)] in (["train"], [])
    assert {o: part[o] for o in ops} == {
        o: k for k in ("train", "val", "test") for o in split_operations(ops, tiny_cfg)[k]
    }  # originals split as before
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"parts": {"train": ["OP_001", "OP_003A"], "val": ["OP_002"], "test": ["OP_003"]}}))
    with pytest.raises(ValueError, match="puts the augmented copy OP_003A in train but OP_003 in test"):
        split_operations(["OP_001", "OP_002", "OP_003", "OP_003A"], tiny_cfg, manifest)
