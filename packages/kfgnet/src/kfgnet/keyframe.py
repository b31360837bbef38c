"""Stage 1b: key-frame localisation from per-frame detections [P §2 "Key-frame Localization"].

Per detected frame: FC7 feature -> FC 256, 5-d (normalised box + frame index) -> FC 256, concat 512 -> LSTM ->
two FC -> a score; the key frame is the argmax. Targets come from the single annotated key frame by label
generation: the mean of image-feature, frame-index and box-IoU similarity to the key entry (exactly 1 there).
The official 1572ffc variant (6-d input with the detection score, LayerNorm, channel non-local block, 2-layer
BiLSTM(512), FC 128, sigmoid) is the ``official_2023`` preset [V brief §2].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kfgnet.config import KeyFrameConfig, KeyFrameTrainConfig, config_to_dict
from kfgnet.data import DataError
from kfgnet.detector import FrameDetections

__all__ = [
    "box_iou_1",
    "generate_labels",
    "key_entry",
    "subsample_entries",
    "geo_features",
    "NonLocalChannel",
    "build_keyframe_model",
    "KeyFrameNet",
    "build_sequences",
    "train_keyframe",
    "predict_keyframes",
    "save_keyframe",
    "load_keyframe",
]


def box_iou_1(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of ``(N, 4)`` xyxy boxes with one box ``(4,)`` -> ``(N,)``."""
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2])
    y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    a0 = (box[2] - box[0]) * (box[3] - box[1])
    union = area + a0 - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def key_entry(frame_num: np.ndarray, key_frame: int) -> int:
    """Index of the entry whose frame is nearest the annotated key frame [V]."""
    if len(frame_num) == 0:
        raise DataError("no detected frames: cannot place the key frame (check the detector / score threshold)")
    return int(np.argmin(np.abs(np.asarray(frame_num) - key_frame)))


def generate_labels(
    features: np.ndarray,
    boxes: np.ndarray,
    frame_num: np.ndarray,
    key: int,
    feat_similarity: str = "exp",
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Score labels from one key entry [P §2; official ``utils.similarity`` V].

    s_feat = exp(-d / d_max) (``"exp"``, official) or 1 - d / d_max (``"linear"``), d the Euclidean feature distance
    to the key entry; s_iou = IoU with the key box; s_frame = 1 - |df| / max |df|. Label = weighted mean; 1 at ``key``.

    Args:
        features: ``(N, D)``; boxes: ``(N, 4)``; frame_num: ``(N,)``; key: entry index of the key frame.

    Returns:
        ``(N,)`` float32.
    """
    d = np.linalg.norm(features - features[key], axis=1)
    dmax = d.max()
    if feat_similarity == "exp":
        s_feat = np.exp(-d / dmax) if dmax > 0 else np.ones_like(d)
    else:
        s_feat = 1.0 - d / dmax if dmax > 0 else np.ones_like(d)
    s_iou = box_iou_1(boxes.astype(np.float64), boxes[key].astype(np.float64))
    df = np.abs(frame_num.astype(np.float64) - frame_num[key])
    s_frame = 1.0 - df / df.max() if df.max() > 0 else np.ones_like(df)
    w = np.asarray(weights, dtype=np.float64)
    return ((w[0] * s_feat + w[1] * s_frame + w[2] * s_iou) / w.sum()).astype(np.float32)


def subsample_entries(n: int, key: int | None, max_entries: int) -> np.ndarray:
    """Official length cap: with ``n >= max_entries`` keep ``max_entries - 1`` linspace entries plus the key [V]."""
    if n < max_entries:
        return np.arange(n)
    idx = set(np.linspace(0, n - 1, max_entries - 1).round().astype(int).tolist())
    if key is not None:
        idx.add(key)
    return np.array(sorted(idx))


def geo_features(det: FrameDetections, cfg: KeyFrameConfig) -> np.ndarray:
    """``(N, 5|6)``: normalised box (per-video min-max [V] or / frame size) + normalised frame index (+ score, raw
    [V] or per-video min-max)."""
    boxes = det.boxes.astype(np.float64)
    if cfg.box_norm == "image":
        h, w = det.size
        nb = boxes / np.array([w, h, w, h], dtype=np.float64)
    else:
        lo, hi = boxes.min(0), boxes.max(0)
        nb = (boxes - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    fr = det.frame_num.astype(np.float64)[:, None] / max(det.num_frames - 1, 1)
    cols = [nb, fr]
    if cfg.geo_dim == 6:
        sc = det.scores.astype(np.float64)
        if cfg.score_norm == "minmax":
            span = sc.max() - sc.min() if len(sc) else 0.0
            sc = (sc - sc.min()) / span if span > 0 else np.ones_like(sc)
        cols.append(sc[:, None])
    return np.concatenate(cols, 1).astype(np.float32)


class NonLocalChannel(nn.Module):
    """The official "NonLocalBlock": theta/phi/g Linear C -> C/2, affinity theta^T phi (C/2 x C/2, summed over
    time), softmax over dim 1, back to C, residual [V brief §2]."""

    def __init__(self, dim: int):
        super().__init__()
        h = dim // 2
        self.theta, self.phi, self.g = nn.Linear(dim, h), nn.Linear(dim, h), nn.Linear(dim, h)
        self.out = nn.Linear(h, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, C)`` -> ``(B, L, C)``."""
        aff = torch.softmax(torch.bmm(self.theta(x).transpose(1, 2), self.phi(x)), dim=1)  # (B, C/2, C/2)
        y = torch.bmm(self.g(x), aff)  # (B, L, C/2)
        return x + self.out(y)


class KeyFrameNet(nn.Module):
    """Per-entry key-frame score model.

    Args:
        cfg: :class:`~kfgnet.config.KeyFrameConfig`: ``feature_dim`` (D of the detector features), ``geo_dim`` (5 or
            6), ``feat_embed`` / ``geo_embed`` (the two FC widths, 256), ``lstm_hidden`` / ``lstm_layers`` /
            ``bidirectional`` (the LSTM), ``head_hidden`` (first of the two output FCs), and the official-variant
            switches ``non_local``, ``layer_norm``, ``sigmoid``.

    ``forward(feat (B, L, D), geo (B, L, g), lengths (B,))`` -> scores ``(B, L)`` (padding positions unspecified).
    """

    def __init__(self, cfg: KeyFrameConfig | None = None):
        super().__init__()
        cfg = cfg or KeyFrameConfig()

        def emb(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(i, o), *([nn.LayerNorm(o)] if cfg.layer_norm else []), nn.ReLU(inplace=True))

        self.feature_dim, self.geo_dim = cfg.feature_dim, cfg.geo_dim
        self.feat_fc = emb(cfg.feature_dim, cfg.feat_embed)
        self.geo_fc = emb(cfg.geo_dim, cfg.geo_embed)
        dim = cfg.feat_embed + cfg.geo_embed
        self.non_local = NonLocalChannel(dim) if cfg.non_local else None
        self.lstm = nn.LSTM(
            dim, cfg.lstm_hidden, num_layers=cfg.lstm_layers, batch_first=True, bidirectional=cfg.bidirectional
        )
        out = cfg.lstm_hidden * (2 if cfg.bidirectional else 1)
        self.head = nn.Sequential(nn.Linear(out, cfg.head_hidden), nn.ReLU(inplace=True), nn.Linear(cfg.head_hidden, 1))
        self.sigmoid = cfg.sigmoid

    def forward(self, feat: torch.Tensor, geo: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if feat.shape[-1] != self.feature_dim or geo.shape[-1] != self.geo_dim:
            raise ValueError(
                f"expected features (B, L, {self.feature_dim}) and geo (B, L, {self.geo_dim}), got "
                f"{tuple(feat.shape)} and {tuple(geo.shape)}; the detector's feature width must match "
                f"feature_dim"
            )
        x = torch.cat([self.feat_fc(feat), self.geo_fc(geo)], dim=-1)  # (B, L, 512)
        if self.non_local is not None:
            x = self.non_local(x)
        # sorted by length on the CPU here (torch's enforce_sorted=False copies its indices back from the device:
        # a host sync per forward)
        lengths = lengths.cpu()
        order = torch.argsort(lengths, descending=True, stable=True)
        inverse = torch.argsort(order)
        packed = pack_padded_sequence(x[order.to(x.device)], lengths[order], batch_first=True)
        y, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])  # (B, L, H)
        y = y[inverse.to(y.device)]
        s = self.head(y).squeeze(-1)  # (B, L)
        return torch.sigmoid(s) if self.sigmoid else s


def build_keyframe_model(cfg: KeyFrameConfig) -> KeyFrameNet:
    """The key-frame score model of ``cfg``."""
    return KeyFrameNet(cfg)


def build_sequences(
    dets: list[FrameDetections], key_frames: list[int] | None, cfg: KeyFrameConfig, names: list[str] | None = None
) -> list[dict[str, np.ndarray]]:
    """Per video: entries (capped), features, geo vector, and (with key frames) labels and the key entry."""
    out = []
    for i, d in enumerate(dets):
        if len(d.frame_num) == 0:
            name = names[i] if names else f"number {i}"
            raise DataError(
                f"video {name} has no frame with a detection; the key-frame stage needs at least one "
                f"(lower the detector's score threshold or retrain the detector)"
            )
        key = key_entry(d.frame_num, key_frames[i]) if key_frames is not None else None
        sel = subsample_entries(len(d.frame_num), key, cfg.max_entries)
        seq: dict[str, np.ndarray] = {
            "frame_num": d.frame_num[sel],
            "feat": d.features[sel],
            "geo": geo_features(d, cfg)[sel],
        }
        if key is not None:
            k = int(np.flatnonzero(sel == key)[0])
            seq["label"] = generate_labels(d.features[sel], d.boxes[sel], d.frame_num[sel], k, cfg.feat_similarity)
            seq["key"] = np.asarray(k)
        out.append(seq)
    return out


def _batch(seqs: list[dict[str, np.ndarray]], device: torch.device) -> tuple[torch.Tensor, ...]:
    lengths = torch.tensor([len(s["feat"]) for s in seqs])
    L = int(lengths.max())
    b = len(seqs)
    feat = torch.zeros(b, L, seqs[0]["feat"].shape[1])
    geo = torch.zeros(b, L, seqs[0]["geo"].shape[1])
    lab = torch.zeros(b, L)
    mask = torch.zeros(b, L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        n = len(s["feat"])
        feat[i, :n] = torch.from_numpy(s["feat"])
        geo[i, :n] = torch.from_numpy(s["geo"])
        if "label" in s:
            lab[i, :n] = torch.from_numpy(s["label"])
        mask[i, :n] = True
    # lengths stay on the CPU (pack_padded_sequence wants them there)
    dev = torch.device(device)
    pin = dev.type == "cuda"
    feat, geo, lab, mask = (t.pin_memory() if pin else t for t in (feat, geo, lab, mask))
    return (
        feat.to(dev, non_blocking=pin),
        geo.to(dev, non_blocking=pin),
        lengths,
        lab.to(dev, non_blocking=pin),
        mask.to(dev, non_blocking=pin),
    )


def _loss(
    model: nn.Module, batch: list[dict[str, np.ndarray]], device: torch.device, mask_padding: bool, ctx: Any
) -> torch.Tensor:
    """MSE over this rank's part of a global batch, normalised by the global number of counted positions (so that
    DDP's gradient average equals the single-process mean over the whole batch)."""
    from medshared.distributed import all_reduce_sum

    feat, geo, lengths, lab, mask = _batch(batch, device)
    pred = model(feat, geo, lengths)
    err = (pred.float() - lab) ** 2
    m = mask.to(err.dtype) if mask_padding else torch.ones_like(err)
    # the count of positions comes from the CPU lengths (no host sync); all-reduced as a device tensor
    local_n = float(lengths.sum()) if mask_padding else float(err.numel())
    local_sum = (err * m).sum()
    if not ctx.enabled:
        return local_sum / max(local_n, 1.0)
    n = all_reduce_sum(torch.tensor(local_n, device=err.device), ctx)
    return local_sum * ctx.world_size / n.clamp_min(1.0)


def train_keyframe(
    seqs: list[dict[str, np.ndarray]],
    cfg: KeyFrameConfig,
    tcfg: KeyFrameTrainConfig,
    device: Any,
    progress: bool = True,
    log: list[dict[str, Any]] | None = None,
    val_seqs: list[dict[str, np.ndarray]] | None = None,
    val_true: list[int] | None = None,
) -> KeyFrameNet:
    """MSE regression of the generated scores [P §3]: Adam (lr 0.01, batch 64, 20 epochs by default), optional step
    decay, gradient clipping and padding in the loss (``official_2023``).

    Args:
        seqs: training sequences of :func:`build_sequences` (with labels).
        device: a device, or a ``medshared.distributed.DistContext``: under torchrun each rank takes every
            world-th sequence of each global batch (``tcfg.batch_size`` is the effective batch), the loss is
            normalised by the global count of positions and DDP averages the gradients.
        log: receives one dict per epoch (``mse``, ``lr``, and ``val_acc_d0`` / ``val_acc_d2`` when validating).
        val_seqs, val_true: held-out sequences and their annotated key frames: validated every ``tcfg.val_every``
            epochs; the best epoch (D = 0 accuracy, then D <= 2, then the later epoch) is returned.

    Returns:
        the best (or last) model, eval mode, unwrapped.
    """
    import copy

    from medshared.distributed import DistContext, unwrap_model, wrap_model
    from medshared.runtime import seed_everything

    ctx = device if isinstance(device, DistContext) else DistContext(device=torch.device(device))
    dev = torch.device(ctx.device)
    seed_everything(tcfg.seed)
    model = build_keyframe_model(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(tcfg.lr_milestones), tcfg.lr_gamma)
    ddp = wrap_model(model, ctx)
    rng = np.random.default_rng(tcfg.seed)  # the same global order on every rank
    it: Any = range(tcfg.epochs)
    if progress and ctx.is_main:
        from tqdm import tqdm

        it = tqdm(it, desc="train key-frame model", unit="epoch", leave=False)
    best: tuple[float, float, int] | None = None
    best_state = None
    for ep in it:
        ddp.train()
        order = rng.permutation(len(seqs))
        tot, nb = torch.zeros((), device=dev), 0  # summed on the device: no host sync per step
        for s in range(0, len(seqs), tcfg.batch_size):
            glob = order[s : s + tcfg.batch_size]
            mine = glob[ctx.rank :: ctx.world_size] if ctx.enabled else glob
            if len(mine) == 0:  # a last global batch smaller than the world: this rank idles, DDP needs a step
                mine = glob[:1]
            loss = _loss(ddp, [seqs[i] for i in mine], dev, tcfg.mask_padding, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            tot += loss.detach() / ctx.world_size
            nb += 1
        rec: dict[str, Any] = {"epoch": ep + 1, "mse": float(tot) / max(nb, 1), "lr": opt.param_groups[0]["lr"]}
        sched.step()
        if val_seqs and val_true is not None and ((ep + 1) % tcfg.val_every == 0 or ep + 1 == tcfg.epochs):
            from medshared.metrics import keyframe_tolerance_accuracy

            pred, _ = predict_keyframes(unwrap_model(ddp), val_seqs, dev)
            tol = keyframe_tolerance_accuracy(np.asarray(pred), np.asarray(val_true), 32)
            rec.update({"val_acc_d0": float(tol[0]), "val_acc_d2": float(tol[2]), "val_acc_d5": float(tol[5])})
            score = (float(tol[0]), float(tol[2]), ep)
            if best is None or score > best:
                best, best_state = score, copy.deepcopy(unwrap_model(ddp).state_dict())
                rec["best"] = True
        if log is not None:
            log.append(rec)
    model = unwrap_model(ddp)
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def predict_keyframes(
    model: KeyFrameNet, seqs: list[dict[str, np.ndarray]], device: torch.device
) -> tuple[list[int], list[np.ndarray]]:
    """Predicted key frame (a frame index: argmax score -> its entry's frame) and the score curve per video."""
    model.eval()
    keys, curves = [], []
    for s in seqs:
        feat, geo, lengths, _, _ = _batch([s], device)
        sc = model(feat, geo, lengths)[0].float().cpu().numpy()
        keys.append(int(s["frame_num"][int(np.argmax(sc))]))
        curves.append(sc)
    return keys, curves


def save_keyframe(path: Any, model: KeyFrameNet, cfg: KeyFrameConfig, extra: dict[str, Any] | None = None) -> None:
    from medshared.checkpoint import save_checkpoint

    save_checkpoint(path, model.state_dict(), {"keyframe": config_to_dict(cfg)}, extra)


def load_keyframe(path: Any, device: torch.device) -> tuple[KeyFrameNet, KeyFrameConfig]:
    from medshared.checkpoint import load_checkpoint

    from kfgnet.config import config_from_dict

    sd, conf, _ = load_checkpoint(path)
    if "keyframe" not in conf:
        raise ValueError(f"{path} is not a kfgnet key-frame checkpoint (no keyframe config in its metadata)")
    cfg = config_from_dict(KeyFrameConfig, conf["keyframe"])
    m = build_keyframe_model(cfg)
    m.load_state_dict(sd)
    return m.to(device).eval(), cfg
