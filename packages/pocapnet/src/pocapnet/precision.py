"""pocapnet's precision setting (``--precision auto|fp32|tf32|bf16``) and the op mixes that decide ``auto`` on a CPU.

:func:`resolve` wraps :func:`medshared.precision.resolve_precision` with pocapnet's probes (each a small version of
what the command runs, timed in fp32 and under bf16 autocast, once per CPU model and torch version, cached):

- ``pocapnet.extract`` (extract, and predict's extractors): the wav2vec2 XLSR-53 layout's conv feature encoder on
  0.25 s of audio plus one 1024-wide transformer layer over 349 frames (a 7-s window's length), and the X-ray
  DenseNet121 on one 224 x 224 frame. Under bf16 the probe runs what extraction runs in bf16: the copies cast once
  (:func:`pocapnet.extractors.cast_wav2vec2_bf16`, :func:`pocapnet.extractors.cast_densenet_bf16`).
- ``pocapnet.train``: one forward + backward of PoCaPNet at the size being trained (the paper's: 3 microphones x
  349 x 1024 audio features, MS-TCN 2 x 10 layers of 64 maps) on 4 seconds, the loss in float64 outside autocast
  (as training computes it). The model's size is part of the key (``pocapnet.train[<size>]``): bf16 pays on the
  paper-size network and not on the tests' tiny one, whose time is overhead.
- ``pocapnet.infer`` (evaluate, predict): the same forward without backward.

What bf16 means per command: extraction runs wav2vec2 and DenseNet on copies cast once to bf16 (features are
stored as float32 / float16 either way); training and inference run the PoCaPNet forward under bf16 autocast, with
the losses computed from float64 logits outside it (the official code's LDAM on float64); the streaming predictor
casts the folded copy's microphone branches to bf16. The old flags are aliases: ``extract --fp32 / --bf16`` and the
config field ``features.bf16`` (true / false; null = ``--precision``), ``predict --bf16`` (= ``--precision bf16``)
and ``predict --fp32`` (= ``--precision fp32``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["KEYS", "resolve", "extract_probe", "train_probe", "infer_probe", "size_tag", "spec_from_aliases"]

KEYS = ("pocapnet.extract", "pocapnet.train", "pocapnet.infer")


def spec_from_aliases(precision: str, bf16: bool | None = None, fp32: bool = False) -> str:
    """The precision to resolve: an explicit ``--precision`` other than auto wins, then the old flags / config field
    (``bf16`` True / False, ``fp32``), then ``auto``."""
    if precision != "auto":
        return precision
    if fp32 or bf16 is False:
        return "fp32"
    if bf16:
        return "bf16"
    return "auto"


@functools.cache
def _extract_models() -> tuple[Any, Any, Any, Any]:
    from transformers import Wav2Vec2Model

    from pocapnet.extractors import cast_densenet_bf16, cast_wav2vec2_bf16
    from pocapnet.weights import _seeded, _xlsr53_config

    cfg = _xlsr53_config(num_hidden_layers=1)
    with _seeded(0):
        w2v = Wav2Vec2Model(cfg).eval().requires_grad_(False)
        import torchxrayvision as xrv

        dn = xrv.models.DenseNet(weights=None).eval().requires_grad_(False)
    return w2v, cast_wav2vec2_bf16(w2v), dn, cast_densenet_bf16(dn)


def extract_probe() -> None:
    """The extraction op mix (see the module docstring); bf16 when called under CPU bf16 autocast."""
    w2v, w2v16, dn, dn16 = _extract_models()
    bf16 = torch.is_autocast_enabled("cpu")
    wave = torch.linspace(-0.5, 0.5, 4000)[None]  # 0.25 s at 16 kHz
    hidden = torch.linspace(-1, 1, 349 * 1024).reshape(1, 349, 1024)
    frame = torch.linspace(-1024, 1024, 224 * 224).reshape(1, 1, 224, 224)
    with torch.no_grad():
        if bf16:
            with torch.autocast("cpu", enabled=False):  # the cast-once copy, as extraction runs it
                w2v16.feature_extractor(wave.bfloat16())
                h = hidden.bfloat16()
                for layer in w2v16.encoder.layers:
                    h = layer(h)[0]
                dn16.features2(frame.bfloat16().contiguous(memory_format=torch.channels_last))
        else:
            w2v.feature_extractor(wave)
            h = hidden
            for layer in w2v.encoder.layers:
                h = layer(h)[0]
            dn.features2(frame)


@functools.cache
def _train_model(model_cfg: Any = None) -> Any:
    from pocapnet.model import PoCaPNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PoCaPNet(model_cfg)


def size_tag(model_cfg: Any = None) -> str:
    """The model's size for the precision cache key, e.g. ``3x349x1024-img7x1024-h1024-2x10x64``."""
    from pocapnet.config import ModelConfig

    c = model_cfg or ModelConfig()
    return (
        f"{c.num_mics}x{c.audio_frames}x{c.audio_dim}-img{c.num_images}x{c.image_dim}-h{c.hidden_dim}-"
        f"{c.num_stages}x{c.num_layers}x{c.num_f_maps}-{'+'.join(c.modalities)}"
    )


def _pocapnet_step(backward: bool, model_cfg: Any = None) -> None:
    from pocapnet.losses import LDAMLoss, stage_loss

    net = _train_model(model_cfg).train(backward)
    c = net.cfg
    T = 4
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(T, c.num_images, c.image_dim, generator=g) if net.use_xray else None
    aud = torch.randn(T, c.num_mics, c.audio_frames, c.audio_dim, generator=g) if net.use_audio else None
    target = torch.arange(T) % (c.num_classes - 1)
    with torch.set_grad_enabled(backward):
        out = net(imgs, aud, torch.arange(T), torch.zeros(c.hidden_dim))
        if backward:
            with torch.autocast("cpu", enabled=False):  # the loss in fp32/float64, as training computes it
                loss = stage_loss(LDAMLoss([10.0] * c.num_classes), out.logits.double(), target)
            net.zero_grad(set_to_none=True)
            loss.backward()


def train_probe(model_cfg: Any = None) -> None:
    """One forward + backward of PoCaPNet (default: paper size) on 4 s (see the module docstring)."""
    _pocapnet_step(True, model_cfg)


def infer_probe(model_cfg: Any = None) -> None:
    """One forward of PoCaPNet (default: paper size) on 4 s in eval mode."""
    _pocapnet_step(False, model_cfg)


_PROBES: dict[str, Callable[..., None]] = {
    "pocapnet.extract": extract_probe,
    "pocapnet.train": train_probe,
    "pocapnet.infer": infer_probe,
}


def resolve(spec: str, device: Any, key: str, model_cfg: Any = None) -> Any:
    """:func:`medshared.precision.resolve_precision` with pocapnet's probe for ``key`` (one of :data:`KEYS`); the
    TF32 switches are applied (on CUDA: on for tf32 / bf16, off for fp32).

    Args:
        model_cfg: for ``pocapnet.train`` / ``pocapnet.infer``, the :class:`~pocapnet.config.ModelConfig` being run
            (None: the paper's); the probe runs a model of that size and the cache key names it.
    """
    from medshared.precision import resolve_precision

    if key not in _PROBES:
        raise ValueError(f"unknown precision key {key!r}; one of {', '.join(KEYS)}")
    probe = _PROBES[key]
    if key != "pocapnet.extract":
        key = f"{key}[{size_tag(model_cfg)}]"
        probe = functools.partial(probe, model_cfg)
    prec = resolve_precision(spec, device, key=key, probe=probe)
    prec.apply()
    return prec
