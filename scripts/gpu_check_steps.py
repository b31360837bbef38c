"""The in-process steps of ``scripts/gpu_check.py`` (each run in its own subprocess by the driver).

``python scripts/gpu_check_steps.py STEP --device cuda|cpu --work DIR`` prints one ``@@GPUCHECK {json}`` line per
result: ``{"name", "status": PASS|FAIL|SKIP, "detail", ...}``. Steps:

- ``paper-<model>``: one training step (forward, backward, SGD) of a package's model built by the package's own
  builder with random weights (no download), in fp32 (TF32 off), TF32 and bf16 autocast: time (median of the timed
  steps), peak GPU memory, and the first forward's max error against fp32 (max |out - out_fp32| / max |out_fp32|).
  On CUDA the paper-size model; with ``--device cpu`` the package's tiny preset, and TF32 is a SKIP.
- ``lungcvt-features``: the batched torch and nnAudio feature backends on the device against the CPU.
- ``alges-embeddings``: ALGES-img / ALGES-sem embeddings on the device against the CPU (same weights and images).
- ``pinned-copy``: host-to-GPU copy of a pocapnet training chunk (512 s x 3 microphones x 349 x 1024 float32,
  2.2 GB) from pageable and from pinned memory.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling gpu_check_models
from gpu_check_models import SPECS, ModelSpec, cpu_generator, seeded  # noqa: E402


def emit(name: str, status: str, detail: str, **extra: Any) -> None:
    print("@@GPUCHECK " + json.dumps({"name": name, "status": status, "detail": detail, **extra}), flush=True)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------------------------------------------------
# paper-size models: build, batch, loss
# --------------------------------------------------------------------------------------------------------------------
def _train_step(
    spec: ModelSpec, m: torch.nn.Module, opt: Any, p: Any, inputs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step under precision ``p``; the loss and the first forward's output (same dropout draws each time)."""
    torch.manual_seed(0)
    opt.zero_grad(set_to_none=True)
    with p.autocast():
        loss, out = spec.loss(m, inputs)
    loss.float().backward()
    opt.step()
    return loss, out


def paper_step(model: str, dev: torch.device) -> int:
    """fp32 / tf32 / bf16 training steps of one model; one result line per precision."""
    from medshared.precision import Precision

    paper = dev.type == "cuda"
    spec = SPECS[model](paper)
    base = spec.build()
    inputs = spec.batch(dev)
    n_timed = 3 if paper else 1
    ref: torch.Tensor | None = None
    fails = 0
    for prec in ("fp32", "tf32", "bf16"):
        name = f"{model} {'paper-size' if paper else 'tiny'} step {prec}"
        if prec == "tf32" and dev.type != "cuda":
            emit(name, "SKIP", "TF32 exists only on CUDA (a CPU runs fp32)")
            continue
        p = Precision(prec, prec, dev.type, "gpu_check")
        p.apply()
        m = copy.deepcopy(base).to(dev).train()
        opt = torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=1e-5)

        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            loss, out = _train_step(spec, m, opt, p, inputs)
            _sync(dev)
            out = out.detach().float().cpu()
            times = []
            for _ in range(n_timed):
                t0 = time.perf_counter()
                _train_step(spec, m, opt, p, inputs)
                _sync(dev)
                times.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - reported as this step's FAIL
            fails += 1
            emit(name, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            continue
        finally:
            m = opt = None  # free the GPU memory before the next precision
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        if ref is None:
            ref = out
        err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        ms = statistics.median(times) * 1e3
        mem = f", peak {peak:.2f} GiB" if peak is not None else ""
        ok = math.isfinite(float(loss))
        fails += not ok
        emit(
            name,
            "PASS" if ok else "FAIL",
            f"{spec.what}: {ms:.1f} ms/step{mem}, max rel err vs fp32 {err:.2e}" + ("" if ok else ", loss not finite"),
            ms=ms,
            peak_gib=peak,
            max_rel_err=err,
        )
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    Precision("fp32", "fp32", dev.type, "").apply()
    return int(fails > 0)


# --------------------------------------------------------------------------------------------------------------------
# device vs CPU comparisons, pinned copies
# --------------------------------------------------------------------------------------------------------------------
def _vs(dev: torch.device) -> str:
    return f"{dev.type} vs cpu" + ("" if dev.type == "cuda" else " (plumbing only without CUDA)")


def lungcvt_features(dev: torch.device) -> int:
    import dataclasses

    import numpy as np
    from lungcvt.config import get_config
    from lungcvt.features import compute_features
    from lungcvt.synthetic import synth_cycle
    from medshared.precision import Precision

    Precision("fp32", "fp32", dev.type, "").apply()  # real fp32 on the GPU: the comparison is about devices
    base = get_config("lungcvt_tiny").features
    rng = np.random.default_rng(0)
    cycles = [synth_cycle(k % 4, float(d), base.sample_rate, rng) for k, d in enumerate((0.6, 1.3, 2.2, 3.5, 0.9))]
    fails = 0
    for backend in ("torch", "nnaudio"):
        name = f"lungcvt features {backend} {_vs(dev)}"
        cfg = dataclasses.replace(base, backend=backend)
        try:
            on_dev = compute_features(cycles, cfg, dev)
            on_cpu = compute_features(cycles, cfg, "cpu")
        except Exception as e:  # noqa: BLE001
            fails += 1
            emit(name, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            continue
        err = max(float(np.abs(a - b).max()) for a, b in zip(on_dev, on_cpu))
        scale = max(float(np.abs(b).max()) for b in on_cpu)
        ok = all(a.shape == b.shape for a, b in zip(on_dev, on_cpu)) and err <= 1e-3 * max(scale, 1.0)
        fails += not ok
        emit(name, "PASS" if ok else "FAIL", f"{len(cycles)} cycles, max abs diff {err:.2e} (values up to {scale:.1f})")
    return int(fails > 0)


def alges_embeddings(dev: torch.device) -> int:
    from alges.config import create_config
    from alges.embeddings import alges_img, alges_sem
    from alges.model import build_model
    from medshared.precision import Precision

    Precision("fp32", "fp32", dev.type, "").apply()
    cfg = create_config("alges_demo" if dev.type == "cuda" else "alges_tiny")
    model = seeded(lambda: build_model(cfg, encoder_weights="none")).eval()
    x = torch.rand(4, 3, cfg.image_size, cfg.image_size, generator=cpu_generator()) * 255
    k = model.head.kernel_size[0]

    def embed(d: torch.device | str) -> dict[str, torch.Tensor]:
        m = copy.deepcopy(model).to(d)
        with torch.no_grad():
            z = m.forward_features(x.to(d))
            logits = m.forward_head(z)
        return {
            "img": alges_img(logits, z, kernel_size=k).float().cpu(),
            "sem": alges_sem(logits, z, kernel_size=k).float().cpu(),
        }

    name = f"alges embeddings {_vs(dev)}"
    try:
        a, b = embed(dev), embed("cpu")
    except Exception as e:  # noqa: BLE001
        emit(name, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        return 1
    errs = {key: float((a[key] - b[key]).abs().max() / b[key].abs().max().clamp_min(1e-12)) for key in a}
    ok = all(a[key].shape == b[key].shape for key in a) and max(errs.values()) <= 1e-3
    emit(
        name,
        "PASS" if ok else "FAIL",
        f"{cfg.name}, 4 images: max rel diff img {errs['img']:.2e}, sem {errs['sem']:.2e}",
    )
    return int(not ok)


def pinned_copy(dev: torch.device) -> int:
    name = "pinned vs pageable copy (pocapnet chunk)"
    if dev.type != "cuda":
        emit(name, "SKIP", "pinned host memory and host-to-GPU copies need CUDA")
        return 0
    shape = (512, 3, 349, 1024)  # pocapnet: batch 512 s x 3 microphones x 349 wav2vec2 frames x 1024
    gb = math.prod(shape) * 4 / 1e9
    pageable = torch.ones(shape)
    pinned = torch.empty(shape, pin_memory=True).copy_(pageable)
    rates = {}
    for label, host in (("pageable", pageable), ("pinned", pinned)):
        host.to(dev, non_blocking=True)  # warm-up
        _sync(dev)
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            y = host.to(dev, non_blocking=True)
            _sync(dev)
            ts.append(time.perf_counter() - t0)
            del y
        rates[label] = gb / statistics.median(ts)
    ratio = rates["pinned"] / rates["pageable"]
    emit(
        name,
        "PASS",
        f"{gb:.2f} GB: pageable {rates['pageable']:.1f} GB/s, pinned {rates['pinned']:.1f} GB/s ({ratio:.1f}x)",
        ratio=ratio,
    )
    return 0


class StepTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise StepTimeout


def run_step(step: str, dev: torch.device) -> int:
    if step.startswith("paper-") and step.removeprefix("paper-") in SPECS:
        return paper_step(step.removeprefix("paper-"), dev)
    steps = {"lungcvt-features": lungcvt_features, "alges-embeddings": alges_embeddings, "pinned-copy": pinned_copy}
    if step not in steps:
        raise SystemExit(f"unknown step {step!r}; one of paper-<{'|'.join(SPECS)}>, {', '.join(steps)}")
    return steps[step](dev)


def main(argv: list[str] | None = None) -> int:
    import signal

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("steps", nargs="+", help="paper-<model> | lungcvt-features | alges-embeddings | pinned-copy")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--step-timeout", type=int, default=0, help="seconds per step (0: none); a late step is a FAIL")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)
    rc = 0
    signal.signal(signal.SIGALRM, _alarm)
    for step in a.steps:
        signal.alarm(a.step_timeout)
        t0 = time.perf_counter()
        try:
            rc |= run_step(step, dev)
        except StepTimeout:
            rc = 1
            emit(step, "FAIL", f"timed out after {a.step_timeout} s")
        except Exception as e:  # noqa: BLE001 - one step's failure does not stop the others
            rc = 1
            emit(step, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        finally:
            signal.alarm(0)
        print(f"@@STEPTIME {step} {time.perf_counter() - t0:.1f}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
