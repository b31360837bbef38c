"""Frozen feature extraction (paper §2.2): wav2vec2 XLSR-53 per microphone, TorchXRayVision DenseNet121 per frame.

Audio, per channel and second ``t`` (code, brief "Features"): pre-emphasis 0.97, 6 s of zeros on the left, samples
``[sr*t, sr*t + 7*sr)`` of the padded signal times a symmetric Hann window, i.e. the 7 s ending with second ``t``
(causal). The last transformer layer's output is taken by a forward hook on ``encoder.layers[-1]`` (before the
encoder's final LayerNorm, as torchaudio's ``extract_features`` and transformers 5.x ``hidden_states[-1]``; the hook
is the same across transformers versions). All 349 frames are kept (option: mean-pooled).

X-ray: one 1024-d DenseNet ``features2`` vector per frame ([0, 255] -> [-1024, 1024], 224 x 224); the 7-image
window of second ``t`` (frames t-6..t, repeating frame 0 at the start) is assembled when loading, not recomputed.

Storage: one memory-mappable ``.npy`` per operation and modality under ``feat_root/OP_xxx/``: ``xray.npy (T, Di)``,
``ch1.npy``/``ch2.npy``/``ch3.npy`` ``(T, F, Da)``, ``labels.npy (T,)``, and ``meta.json`` written last (resume
marker).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pocapnet.config import FeatureConfig
from pocapnet.data import Operation, load_operation, read_frame

__all__ = [
    "XRV_ALL_FILE",
    "XRV_ALL_URL",
    "tiny_wav2vec2_config",
    "load_wav2vec2",
    "load_densenet",
    "audio_windows",
    "ChannelsLastFeatureEncoder",
    "cast_wav2vec2_bf16",
    "AudioExtractor",
    "XrayExtractor",
    "image_windows",
    "extract_operation",
    "extract_dataset",
    "FeatureOperation",
    "load_feature_operation",
]

XRV_ALL_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
XRV_ALL_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/" + XRV_ALL_FILE
_ENV = "POCAPNET_WEIGHTS_DIR"


@contextlib.contextmanager
def _seeded(seed: int):
    """Deterministic random init (so random-weight extractors give the same features in extract and predict)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------------------- audio
def tiny_wav2vec2_config() -> Any:
    """A 22,872-parameter wav2vec2 config (brief) with the default conv stack, so 7 s -> 349 frames."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(8,) * 7,
        feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, apply_spec_augment=False, mask_time_prob=0.0, layerdrop=0.0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0,
    )


def _xlsr53_config() -> Any:
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, conv_dim=(512,) * 7,
        feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True, num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16, apply_spec_augment=False, mask_time_prob=0.0, layerdrop=0.0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    )


def load_wav2vec2(source: str) -> nn.Module:
    """Load a frozen wav2vec2 encoder, offline.

    Args:
        source: ``"tiny-random"`` (tests/demo), ``"random-xlsr53"`` (XLSR-53-size, random weights, for benchmarks),
            a local folder with ``config.json`` + weights, or a hub name looked up in ``$POCAPNET_WEIGHTS_DIR/<name>``
            and then the Hugging Face cache (``local_files_only``; never the network).

    Raises:
        FileNotFoundError: the weights are not available locally (names where to get them and the random flag).
    """
    from transformers import Wav2Vec2Model

    if source in ("tiny-random", "random-xlsr53"):
        with _seeded(0):
            model = Wav2Vec2Model(tiny_wav2vec2_config() if source == "tiny-random" else _xlsr53_config())
        return model.eval().requires_grad_(False)
    candidates = [Path(source)]
    if os.environ.get(_ENV):
        candidates.append(Path(os.environ[_ENV]) / source.split("/")[-1])
    for c in candidates:
        if c.is_dir() and (c / "config.json").is_file():
            return Wav2Vec2Model.from_pretrained(str(c), local_files_only=True).eval().requires_grad_(False)
    try:
        return Wav2Vec2Model.from_pretrained(source, local_files_only=True).eval().requires_grad_(False)
    except Exception as e:  # OSError / EnvironmentError from transformers
        raise FileNotFoundError(
            f"wav2vec2 weights {source!r} not found locally (looked in {', '.join(map(str, candidates))} and the "
            f"Hugging Face cache). Download them on a machine with network "
            f"(`huggingface-cli download facebook/wav2vec2-large-xlsr-53`, or save_pretrained into "
            f"${_ENV}/wav2vec2-large-xlsr-53), or pass `--wav2vec2 tiny-random` for a random tiny model."
        ) from e


def audio_windows(wave: np.ndarray, seconds: np.ndarray | list[int], cfg: FeatureConfig) -> np.ndarray:
    """Causal Hann windows of one channel.

    Args:
        wave: ``(N,)`` float32 at ``cfg.sample_rate``.
        seconds: second indices ``t``; window ``t`` covers original samples ``[sr*(t-6), sr*(t+1))``.

    Returns:
        ``(len(seconds), window_s * sr)`` float32.
    """
    sr, w = cfg.sample_rate, cfg.window_s * cfg.sample_rate
    x = np.asarray(wave, dtype=np.float32)
    y = np.empty_like(x)
    y[:1] = x[:1]
    y[1:] = x[1:] - cfg.pre_emphasis * x[:-1]  # pre-emphasis
    pad = (cfg.window_s - cfg.hop_s) * sr
    y = np.concatenate([np.zeros(pad, np.float32), y, np.zeros(w, np.float32)])  # left pad 6 s (+ right guard)
    hann = np.hanning(w).astype(np.float32)  # symmetric Hann(112000), code: scipy hann(sym=True)
    return np.stack([y[sr * t * cfg.hop_s : sr * t * cfg.hop_s + w] * hann for t in seconds])


class ChannelsLastFeatureEncoder(nn.Module):
    """wav2vec2's convolutional feature encoder ("layer" norm variant, XLSR-53) as unfold + matmul, channels last.

    The same math as transformers' ``Wav2Vec2FeatureEncoder`` (per layer: Conv1d, LayerNorm over channels, GELU),
    computed on ``(B, L, C)`` tensors: each strided convolution is a strided view of its input (``(B, L_out, k*C)``,
    copied once) times a ``(k*C, C_out)`` matrix, and the LayerNorm needs no transposes. In bf16 on this AVX512-BF16 /
    AMX CPU it is about 4x faster than oneDNN's channels-first ``conv1d``, whose layout reorders (``aten::copy_``)
    were 44 % of the bf16 forward's profile (measured, see README "Benchmarks").

    Args:
        encoder: ``model.feature_extractor`` of a ``Wav2Vec2Model`` with ``feat_extract_norm="layer"``.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.conv_layers = encoder.conv_layers
        for i, layer in enumerate(self.conv_layers):
            w = layer.conv.weight  # (C_out, C_in, k)
            self.register_buffer(f"w{i}", w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous(), persistent=False)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """True when every conv layer is conv -> LayerNorm -> activation (``feat_extract_norm="layer"``)."""
        layers = getattr(getattr(model, "feature_extractor", None), "conv_layers", [])
        return len(layers) > 0 and all(hasattr(la, "layer_norm") and hasattr(la, "conv") for la in layers)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` samples -> ``(B, C, L)`` (a transposed view of ``(B, L, C)``, as the HF encoder's output)."""
        h = input_values[:, :, None].contiguous()  # (B, N) -> (B, N, 1)
        for i, layer in enumerate(self.conv_layers):
            k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
            B, L, C = h.shape
            lo = (L - k) // s + 1
            # (B, L, C) -> (B, L_out, k*C): row t holds inputs [s*t, s*t + k) (time-major, as the permuted weight)
            p = h.as_strided((B, lo, k * C), (L * C, s * C, 1), h.storage_offset()).reshape(B * lo, k * C)  # copy
            h = F.linear(p, getattr(self, f"w{i}"), layer.conv.bias).view(B, lo, -1)  # one GEMM -> (B, L_out, C_out)
            h = layer.activation(layer.layer_norm(h))
        return h.transpose(1, 2)  # (B, L, C) -> (B, C, L) view


def cast_wav2vec2_bf16(model: nn.Module) -> nn.Module:
    """A bf16 copy of a wav2vec2 model for inference: weights cast once, fast feature encoder, fused attention.

    Autocast re-casts every weight on every call; a model cast once runs its matmuls on bf16 weights directly
    (AMX / AVX512-BF16 on CPU). The positional convolution's weight norm is folded into a plain weight (it would
    otherwise be recomputed per call), the conv feature encoder is replaced by :class:`ChannelsLastFeatureEncoder`
    where the architecture allows it, and attention uses ``sdpa``. Accuracy against fp32 is measured in
    ``bench/extract.py`` (cosine of the layer-24 features on real German speech and synthetic audio).
    """
    import copy

    from torch.nn.utils import parametrize

    m = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    pos = getattr(getattr(m, "encoder", None), "pos_conv_embed", None)
    conv = getattr(pos, "conv", None)
    if conv is not None and parametrize.is_parametrized(conv, "weight"):
        # a plain Conv1d with the folded weight (remove_parametrizations would edit the class the fp32 model shares)
        plain = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0], padding=conv.padding[0],
                          groups=conv.groups, bias=conv.bias is not None, dtype=torch.bfloat16, device=conv.bias.device)
        with torch.no_grad():
            plain.weight.copy_(conv.weight)
            if conv.bias is not None:
                plain.bias.copy_(conv.bias)
        pos.conv = plain.requires_grad_(False)
    if ChannelsLastFeatureEncoder.supports(m):
        m.feature_extractor = ChannelsLastFeatureEncoder(m.feature_extractor)
    if hasattr(m.config, "_attn_implementation"):
        m.config._attn_implementation = "sdpa"
    return m


class AudioExtractor:
    """wav2vec2 features of batched 7 s windows, last transformer layer via a forward hook.

    Two precisions: fp32 (the given model, the reference) and bf16 (``cfg.bf16``, the default: a copy cast once by
    :func:`cast_wav2vec2_bf16`, built on first use and kept; features are returned as float32 either way).
    """

    def __init__(self, model: nn.Module, cfg: FeatureConfig, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = torch.device(device)
        self._out: torch.Tensor | None = None
        self._bf16_model: nn.Module | None = None
        self.model.encoder.layers[-1].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._out = output[0] if isinstance(output, (tuple, list)) else output

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def bf16_model(self) -> nn.Module:
        """The bf16 copy (built on first call)."""
        if self._bf16_model is None:
            self._bf16_model = cast_wav2vec2_bf16(self.model)
            self._bf16_model.encoder.layers[-1].register_forward_hook(self._hook)
        return self._bf16_model

    @torch.no_grad()
    def __call__(self, windows: np.ndarray | torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
        """``windows``: ``(B, samples)`` -> ``(B, F, D)`` float32 (``(B, 1, D)`` when ``cfg.pooled``).

        Args:
            windows: Hann-windowed 7 s segments at 16 kHz.
            bf16: override ``cfg.bf16`` (True: the bf16 copy; False: the fp32 model).
        """
        x = torch.as_tensor(windows, dtype=torch.float32, device=self.device)
        if self.cfg.normalize_waveform:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        use_bf16 = self.cfg.bf16 if bf16 is None else bf16
        if use_bf16:
            self.bf16_model()(x.to(torch.bfloat16))
        else:
            self.model(x)
        out = self._out
        assert out is not None, "forward hook on encoder.layers[-1] did not fire"
        out = out.float()
        self._out = None
        return out.mean(dim=1, keepdim=True) if self.cfg.pooled else out  # (B, F, D) or (B, 1, D)


# ----------------------------------------------------------------------------------------------------------- X-ray
def _resolve_xrv_file(weights: str) -> Path:
    p = Path(weights)
    if p.suffix in (".pt", ".pth", ".safetensors"):
        if p.is_file():
            return p
        raise FileNotFoundError(f"X-ray weights file not found: {p}. Get it from {XRV_ALL_URL}, or pass "
                                "`--xray-weights random` (or tiny-random) for random initialisation.")
    cands = []
    if os.environ.get(_ENV):
        cands.append(Path(os.environ[_ENV]) / XRV_ALL_FILE)
    cands.append(Path.home() / ".torchxrayvision" / "models_data" / XRV_ALL_FILE)
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"TorchXRayVision weights '{weights}' not found: looked for {XRV_ALL_FILE} in "
        f"{', '.join(str(c.parent) for c in cands)}. Download {XRV_ALL_URL} into ${_ENV} or "
        "~/.torchxrayvision/models_data/, or pass `--xray-weights random` for random initialisation."
    )


def load_densenet(weights: str) -> nn.Module:
    """TorchXRayVision DenseNet121 in eval mode.

    Args:
        weights: ``"densenet121-res224-all"`` (the paper's; file from ``$POCAPNET_WEIGHTS_DIR`` or the xrv cache),
            a file path (.pt whole pickled model as xrv releases it, or a state dict), ``"random"`` (DenseNet121,
            random), or ``"tiny-random"`` (a small random DenseNet with 32-d features, tests/demo).
    """
    import torchxrayvision as xrv

    if weights in ("random", "tiny-random"):
        with _seeded(0):
            if weights == "random":
                model = xrv.models.DenseNet(weights=None)
            else:
                model = xrv.models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)
        return model.eval().requires_grad_(False)
    path = _resolve_xrv_file(weights)
    model = xrv.models.DenseNet(weights=None)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # xrv's release file is a whole pickled model (needs weights_only=False; only load files you trust).
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
        state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "op_threshs"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if k != "op_threshs"]
    if bad or unexpected:
        raise ValueError(f"{path}: not a DenseNet121 checkpoint (missing {bad[:3]}, unexpected {unexpected[:3]})")
    return model.eval().requires_grad_(False)


class XrayExtractor:
    """DenseNet ``features2`` (ReLU + global average pool) of single frames."""

    def __init__(self, model: nn.Module, cfg: FeatureConfig, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return int(self.model.classifier.in_features)

    def preprocess(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Grey ``[0, 255]`` frames -> ``(N, 1, S, S)`` in [-1024, 1024] (xrv ``normalize(img, 255)``)."""
        s = self.cfg.xray_size
        out = []
        for f in frames:
            t = torch.as_tensor(f, dtype=torch.float32)[None, None]  # (H, W) -> (1, 1, H, W)
            t = F.interpolate(t, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
            out.append(t.clamp(0, 255) / 255.0 * 2048.0 - 1024.0)
        return torch.cat(out)  # (N, 1, S, S)

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray]) -> torch.Tensor:
        """List of N grey frames -> ``(N, Di)`` float32."""
        x = self.preprocess(frames).to(self.device)
        return self.model.features2(x).float()


def image_windows(xray: np.ndarray | torch.Tensor, seconds: np.ndarray, num_images: int = 7) -> torch.Tensor:
    """Assemble causal 7-image windows ``(len(seconds), 7, Di)`` from per-frame features ``(T, Di)``.

    Second ``t`` sees frames ``t-6..t``; indices before 0 repeat frame 0 (code).
    """
    idx = np.asarray(seconds)[:, None] + np.arange(-(num_images - 1), 1)[None, :]  # (B, 7)
    idx = np.clip(idx, 0, None)
    return torch.as_tensor(np.asarray(xray[idx.ravel()]), dtype=torch.float32).reshape(len(idx), num_images, -1)


# ------------------------------------------------------------------------------------------------------- pipeline
def _signature(cfg: FeatureConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for k in ("batch_windows", "xray_batch", "bf16"):
        d.pop(k)
    return d


def extract_operation(op: Operation, out_dir: str | Path, audio: AudioExtractor, xray: XrayExtractor,
                      cfg: FeatureConfig, progress: bool = True) -> Path:
    """Extract and store one operation's features; ``meta.json`` is written last (complete marker)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    T = op.seconds
    dtype = np.float16 if cfg.fp16 else np.float32
    t0 = time.perf_counter()
    # X-ray: once per frame
    xr = np.lib.format.open_memmap(out_dir / "xray.npy.tmp", mode="w+", dtype=dtype, shape=(T, xray.dim))
    bar = tqdm(total=T * 4, desc=f"{op.name} features", unit="s", disable=not progress, leave=False)
    for a in range(0, T, cfg.xray_batch):
        b = min(a + cfg.xray_batch, T)
        xr[a:b] = xray([read_frame(p) for p in op.frames[a:b]]).cpu().numpy()
        bar.update(b - a)
    xr.flush()
    del xr
    frames = 1 if cfg.pooled else None
    for ch in range(op.audio.shape[0]):
        arr = None
        for a in range(0, T, cfg.batch_windows):
            b = min(a + cfg.batch_windows, T)
            feats = audio(audio_windows(op.audio[ch], np.arange(a, b), cfg)).cpu().numpy()
            if arr is None:
                frames = feats.shape[1]
                arr = np.lib.format.open_memmap(out_dir / f"ch{ch + 1}.npy.tmp", mode="w+", dtype=dtype,
                                                shape=(T, frames, feats.shape[2]))
            arr[a:b] = feats
            bar.update(b - a)
        assert arr is not None
        arr.flush()
        del arr
    bar.close()
    if op.labels is not None:
        np.save(out_dir / "labels.npy.tmp.npy", op.labels.astype(np.int64))
        os.replace(out_dir / "labels.npy.tmp.npy", out_dir / "labels.npy")
    for name in ("xray", "ch1", "ch2", "ch3"):
        os.replace(out_dir / f"{name}.npy.tmp", out_dir / f"{name}.npy")
    meta = {"op": op.name, "seconds": T, "image_dim": xray.dim, "audio_dim": audio.dim, "audio_frames": frames,
            "dtype": np.dtype(dtype).name, "labels": op.labels is not None, "features": _signature(cfg),
            "extract_seconds": round(time.perf_counter() - t0, 2)}
    from medshared.runtime import atomic_write_json

    atomic_write_json(out_dir / "meta.json", meta)
    return out_dir


def is_complete(op_dir: Path, cfg: FeatureConfig) -> bool:
    """True when ``op_dir`` holds finished features extracted with the same settings."""
    m = op_dir / "meta.json"
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text()).get("features") == json.loads(json.dumps(_signature(cfg)))
    except json.JSONDecodeError:
        return False


def extract_dataset(data_root: str | Path, feat_root: str | Path, cfg: FeatureConfig, device: str = "cpu",
                    ops: list[str] | None = None, progress: bool = True, require_labels: bool = False) -> list[str]:
    """Extract every operation under ``data_root`` into ``feat_root`` (resumable: finished operations are skipped)."""
    from tqdm import tqdm

    from pocapnet.data import list_operations, read_annotations

    ops = ops or list_operations(data_root)
    feat_root = Path(feat_root)
    todo = [o for o in ops if not is_complete(feat_root / o, cfg)]
    if todo:
        ann_path = Path(data_root) / "annotations.json"
        ann = read_annotations(ann_path) if ann_path.is_file() else None
        audio = AudioExtractor(load_wav2vec2(cfg.wav2vec2), cfg, device)
        xray = XrayExtractor(load_densenet(cfg.xray_weights), cfg, device)
        for o in tqdm(todo, desc="extract", unit="op", disable=not progress):
            op = load_operation(data_root, o, cfg.sample_rate, require_labels=require_labels, annotations=ann)
            extract_operation(op, feat_root / o, audio, xray, cfg, progress=progress)
    return ops


class FeatureOperation:
    """Memory-mapped features of one operation."""

    def __init__(self, op_dir: str | Path) -> None:
        op_dir = Path(op_dir)
        meta_path = op_dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{op_dir}: no finished features (meta.json missing); run `pocapnet extract`")
        self.meta = json.loads(meta_path.read_text())
        self.name = self.meta["op"]
        self.xray = np.load(op_dir / "xray.npy", mmap_mode="r")  # (T, Di)
        self.audio = [np.load(op_dir / f"ch{c}.npy", mmap_mode="r") for c in (1, 2, 3)]  # 3 x (T, F, Da)
        lab = op_dir / "labels.npy"
        self.labels = np.load(lab) if lab.is_file() else None
        T = len(self.xray)
        if any(len(a) != T for a in self.audio) or (self.labels is not None and len(self.labels) != T):
            raise ValueError(f"{op_dir}: feature arrays disagree in length; re-run `pocapnet extract`")

    def __len__(self) -> int:
        return len(self.xray)

    def chunk(self, start: int, stop: int, num_images: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
        """Seconds ``[start, stop)``: images ``(B, 7, Di)`` and audio ``(B, 3, F, Da)`` float32 tensors."""
        sec = np.arange(start, stop)
        imgs = image_windows(self.xray, sec, num_images)
        aud = torch.stack([torch.from_numpy(np.array(a[start:stop], dtype=np.float32)) for a in self.audio], 1)
        return imgs, aud  # (B, 7, Di), (B, 3, F, Da)


def load_feature_operation(feat_root: str | Path, op: str) -> FeatureOperation:
    """Open ``feat_root/op``."""
    return FeatureOperation(Path(feat_root) / op)
