"""Fixtures of the kfgnet tests: one small synthetic cohort written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the manifest.json of a tiny synthetic cohort (procedural backgrounds, 64-px frames)."""
    from kfgnet.synthetic import SyntheticConfig, make_synthetic

    out = tmp_path_factory.mktemp("kfgnet_synth")
    return make_synthetic(out, SyntheticConfig(n_patients=6, num_frames=24, size=64, seed=1), None, layout="release")


@pytest.fixture
def detection_items(tmp_path: Path) -> list:
    """Four 64-px grey PNGs in ``tmp_path``, each with one bright box, as ``DetectionItem`` s (train 3 / val 1)."""
    import numpy as np
    from kfgnet.detection_data import DetectionItem
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        img = rng.integers(0, 60, (64, 64), dtype=np.uint8)
        img[10 : 30 + i, 8 : 32 + i] = 220
        Image.fromarray(img).save(tmp_path / f"{i}_1.png")
        items.append(DetectionItem(tmp_path / f"{i}_1.png", np.array([[8, 10, 32 + i, 30 + i]], np.float32), str(i)))
    return items


def make_keyframe_seqs(geo_dim: int, feature_dim: int = 8) -> list[dict]:
    """Four random key-frame sequences (lengths 5, 7, 6, 4) in the layout ``train_keyframe`` takes."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        {
            "frame_num": np.arange(n),
            "feat": rng.random((n, feature_dim), dtype=np.float32),
            "geo": rng.random((n, geo_dim), dtype=np.float32),
            "label": rng.random(n).astype(np.float32),
            "key": np.asarray(1),
        }
        for n in (5, 7, 6, 4)
    ]


@pytest.fixture
def keyframe_seqs() -> type:
    """:func:`make_keyframe_seqs` (call it with the config's ``geo_dim``)."""
    return make_keyframe_seqs


class DeviceGuard:
    """A CUDA stand-in check for runs on ``device="meta"`` (a ``TorchFunctionMode``; ``medshared.testing`` may
    offer ``strict_devices`` for the first half).

    - An op whose tensor arguments live on two devices raises (a CPU 0-dim tensor is allowed, as CUDA allows it;
      copies, and packed sequences' lengths / batch sizes, which must be on the CPU, are allowed).
    - Host syncs on non-CPU tensors (``item``, ``tolist``, ``float()``, ``int()``, ``bool()``, ``.cpu()``,
      ``.numpy()``) are counted in ``syncs`` (name per call) and, on meta tensors, answered with placeholders (meta
      has no data), so a training loop runs to its end and the test can count its syncs per epoch.
    """

    ALLOWED = frozenset(
        {"to", "copy_", "_has_compatible_shallow_copy_type", "set_", "__set__", "__get__"}
        | {"_pack_padded_sequence", "_pad_packed_sequence", "lstm", "gru"}  # CPU batch sizes by design
    )
    SYNCS = frozenset({"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy"})

    def __init__(self) -> None:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_flatten

        guard = self
        self.syncs: list[str] = []

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                kwargs = kwargs or {}
                name = getattr(func, "__name__", str(func))
                if name in guard.SYNCS and args and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
                    guard.syncs.append(name)
                    t = args[0]
                    if t.device.type == "meta":
                        if name == "tolist":
                            return torch.zeros(t.shape).tolist()
                        if name in ("cpu", "numpy"):
                            z = torch.zeros(t.shape, dtype=t.dtype)
                            return z.numpy() if name == "numpy" else z
                        return {"__bool__": True, "__int__": 1, "__index__": 1}.get(name, 1.0)
                if name not in guard.ALLOWED:
                    flat, _ = tree_flatten((args, kwargs))
                    devs = {
                        a.device
                        for a in flat
                        if isinstance(a, torch.Tensor) and not (a.device.type == "cpu" and a.dim() == 0)
                    }
                    if len(devs) > 1:
                        raise RuntimeError(f"{name} mixes tensors on {sorted(map(str, devs))}")
                return func(*args, **kwargs)

        self.mode = _Mode()

    def __enter__(self) -> DeviceGuard:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)


@pytest.fixture
def device_guard() -> type[DeviceGuard]:
    """:class:`DeviceGuard` (use ``with device_guard() as g: ...``; ``g.syncs`` lists the host syncs)."""
    return DeviceGuard
