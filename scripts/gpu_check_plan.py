"""The steps of ``scripts/gpu_check.py``: which package commands run, in which chains, with which timeouts, and
what each must leave behind (files, a recorded DDP process group). ``gpu_check.py`` runs them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS_PY = Path(__file__).resolve().parent / "gpu_check_steps.py"
DDP_PROBE = Path(__file__).resolve().parent / "ddp_probe.py"


@dataclass
class Step:
    """A subprocess: a package command (``argv`` after ``python``) or in-process steps of gpu_check_steps.py."""

    name: str
    argv: list[str]
    timeout: tuple[int, int]  # seconds on (cuda, cpu)
    needs: list[str] = field(default_factory=list)  # steps that must have passed
    env: dict[str, str] = field(default_factory=dict)
    expect: list[Path] = field(default_factory=list)  # files the command must leave
    check: Callable[[], str | None] | None = None  # extra check after rc 0: an error message or None
    inproc: bool = False  # results come as @@GPUCHECK lines

    def __post_init__(self) -> None:
        self.argv = [str(x) for x in self.argv]


def _py(module: str, *args: object) -> list[str]:
    return ["-m", module, *map(str, args)]


def _ddp(record: Path, module: str, *args: object) -> list[str]:
    return [str(DDP_PROBE), str(record), "-m", module, *map(str, args)]


def _ddp_check(record: Path, backend: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            rec = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            return f"no DDP record ({e})"
        groups = rec.get("groups", [])
        if not groups:
            return "no process group was created (MEDREPRO_FORCE_DDP ignored?)"
        g = groups[0]
        if g["backend"] != backend or g["world_size"] != 1:
            return f"group {g}, expected {backend} at world size 1"
        if not rec.get("ddp"):
            return "a process group but no DistributedDataParallel wrap"
        return None

    return check


def build_steps(work: Path, dev: str) -> list[list[Step]]:
    """Chains of steps (each chain runs in order; chains may run side by side with --jobs)."""
    cuda = dev.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    ddp_env = {"MEDREPRO_FORCE_DDP": "1"}
    chains: list[list[Step]] = []

    # pocapnet: synthetic operations -> extract -> train; again (resume); train under DDP
    w = work / "pocapnet"
    extract = _py("pocapnet", "extract", "--data", w / "data", "--out", w / "feats", "--preset", "pocapnet_tiny")
    extract += ["--device", dev]
    train = ["train", "--features", w / "feats", "--preset", "pocapnet_tiny", "--device", dev]
    chains.append(
        [
            Step(
                "pocapnet make-synthetic",
                _py("pocapnet", "make-synthetic", "--out", w / "data", "--n-ops", 5, "--seconds", 28, 34),
                (120, 120),
            ),
            Step("pocapnet extract", extract, (180, 120), ["pocapnet make-synthetic"]),
            Step(
                "pocapnet train",
                _py("pocapnet", *train, "--out", w / "run"),
                (180, 120),
                ["pocapnet extract"],
                expect=[w / "run" / "best.safetensors", w / "run" / "last.pt"],
            ),
            Step("pocapnet extract again (resume)", extract, (120, 90), ["pocapnet extract"]),
            Step(
                "pocapnet train again (resume)",
                _py("pocapnet", *train, "--out", w / "run"),
                (120, 90),
                ["pocapnet train"],
            ),
            Step(
                f"pocapnet train DDP ({backend}, 1 process)",
                _ddp(w / "ddp.json", "pocapnet", *train, "--out", w / "run_ddp"),
                (180, 120),
                ["pocapnet extract"],
                env=ddp_env,
                expect=[w / "run_ddp" / "best.safetensors"],
                check=_ddp_check(w / "ddp.json", backend),
            ),
        ]
    )

    # kfgnet: synthetic videos -> detector -> key-frame model -> classifier; again (resume); DDP
    w = work / "kfgnet"
    cfg = w / "tiny.yaml"
    common = ["--manifest", w / "data" / "manifest.json", "--config", cfg, "--device", dev, "--no-progress"]
    det = ["train-detector", *common, "--preset", "tiny", "--epochs", 1, "--images-per-video", 1]
    det_ck = w / "det" / "detector_best.safetensors"
    kf = ["train-keyframe", *common, "--detector", det_ck, "--preset", "kfgnet_keyframe_tiny", "--epochs", 2]
    kf += ["--val-fraction", 0.34]
    cls = ["train-classifier", *common, "--preset", "kfgnet_tiny", "--folds", 2]
    kfgnet = [
        Step(
            "kfgnet make-synthetic",
            _py("kfgnet", "make-synthetic", "--out", w / "data", "--patients", 6, "--frames", 16, "--size", 64)
            + ["--no-real-backgrounds"],
            (120, 120),
        ),
        Step("kfgnet train-detector", _py("kfgnet", *det, "--out", w / "det"), (180, 120), ["kfgnet make-synthetic"]),
        Step(
            "kfgnet train-keyframe",
            _py("kfgnet", *kf, "--out", w / "kf"),
            (180, 120),
            ["kfgnet train-detector"],
            expect=[w / "kf" / "keyframe.safetensors"],
        ),
        Step(
            "kfgnet train-classifier",
            _py("kfgnet", *cls, "--out", w / "cls"),
            (180, 120),
            ["kfgnet make-synthetic"],
            expect=[w / "cls" / "cv_metrics.json"],
        ),
        Step(
            "kfgnet train-detector again (resume)",
            _py("kfgnet", *det, "--out", w / "det"),
            (120, 90),
            ["kfgnet train-detector"],
        ),
        Step(
            "kfgnet train-keyframe again (resume)",
            _py("kfgnet", *kf, "--out", w / "kf"),
            (120, 90),
            ["kfgnet train-keyframe"],
        ),
        Step(
            "kfgnet train-classifier again (resume)",
            _py("kfgnet", *cls, "--out", w / "cls"),
            (120, 90),
            ["kfgnet train-classifier"],
        ),
    ]
    for what, argv, needs in (
        ("train-detector", det, "kfgnet make-synthetic"),
        ("train-classifier", cls, "kfgnet make-synthetic"),
    ):
        rec = w / f"ddp_{what}.json"
        kfgnet.append(
            Step(
                f"kfgnet {what} DDP ({backend}, 1 process)",
                _ddp(rec, "kfgnet", *argv, "--out", w / f"ddp_{what}"),
                (180, 120),
                [needs],
                env=ddp_env,
                check=_ddp_check(rec, backend),
            )
        )
    chains.append(kfgnet)

    # deepacc: synthetic spreads -> train deepacc_tiny; again (resume); DDP
    w = work / "deepacc"
    train = ["train", "--data", w / "data" / "annotations.json", "--model", "deepacc_tiny", "--config", w / "tiny.yaml"]
    train += ["--pretrained", "none", "--device", dev, "--quiet"]
    chains.append(
        [
            Step(
                "deepacc make-synthetic",
                _py("deepacc", "make-synthetic", "--out", w / "data", "--n-images", 2, "--height", 160, "--width", 160)
                + ["--source", "procedural", "--seed", 3],
                (120, 120),
            ),
            Step(
                "deepacc train --model deepacc_tiny",
                _py("deepacc", *train, "--out", w / "run"),
                (180, 120),
                ["deepacc make-synthetic"],
                expect=[w / "run" / "model.safetensors"],
            ),
            Step(
                "deepacc train again (resume)",
                _py("deepacc", *train, "--out", w / "run"),
                (120, 90),
                ["deepacc train --model deepacc_tiny"],
            ),
            Step(
                f"deepacc train DDP ({backend}, 1 process)",
                _ddp(w / "ddp.json", "deepacc", *train, "--out", w / "run_ddp"),
                (180, 120),
                ["deepacc make-synthetic"],
                env=ddp_env,
                check=_ddp_check(w / "ddp.json", backend),
            ),
        ]
    )

    # lungcvt: synthetic ICBHI database -> train lungcvt_tiny; again (resume); DDP; features device vs CPU
    w = work / "lungcvt"
    train = ["train", "--data", w / "data", "--preset", "lungcvt_tiny", "--epochs", 1, "--offline", "--device", dev]
    gen = (
        "from lungcvt.synthetic import generate_icbhi; "
        f"generate_icbhi({str(w / 'data')!r}, n_patients=8, recordings_per_patient=(1, 2), "
        "cycles_per_recording=(3, 5), seed=1)"
    )
    chains.append(
        [
            Step("lungcvt synthetic data", ["-c", gen], (120, 120)),
            Step(
                "lungcvt train --preset lungcvt_tiny",
                _py("lungcvt", *train, "--out", w / "run"),
                (180, 120),
                ["lungcvt synthetic data"],
                expect=[w / "run" / "best.safetensors"],
            ),
            Step(
                "lungcvt train again (resume)",
                _py("lungcvt", *train, "--out", w / "run"),
                (120, 90),
                ["lungcvt train --preset lungcvt_tiny"],
            ),
            Step(
                f"lungcvt train DDP ({backend}, 1 process)",
                _ddp(w / "ddp.json", "lungcvt", *train, "--out", w / "run_ddp"),
                (180, 120),
                ["lungcvt synthetic data"],
                env=ddp_env,
                check=_ddp_check(w / "ddp.json", backend),
            ),
        ]
    )

    # alges: synthetic CholecSeg8k videos -> train alges_tiny; again (resume); DDP
    w = work / "alges"
    train = ["train", "--data", w / "data", "--labeled", w / "labeled.txt", "--preset", "alges_tiny", "--epochs", 2]
    train += ["--device", dev]
    gen = (
        "import pathlib; from alges.synthetic import generate_cholecseg8k; "
        f"generate_cholecseg8k({str(w / 'data')!r}, n_videos=3, frames_per_video=8, clip_len=4, width=96, "
        "height=54, seed=0); "
        f"pathlib.Path({str(w / 'labeled.txt')!r}).write_text("
        "'video01/video01_00000/frame_0_endo\\nvideo02/video02_00004/frame_5_endo\\n')"
    )
    chains.append(
        [
            Step("alges synthetic data", ["-c", gen], (120, 120)),
            Step(
                "alges train --preset alges_tiny",
                _py("alges", *train, "--out", w / "run"),
                (180, 120),
                ["alges synthetic data"],
                expect=[w / "run" / "model.safetensors"],
            ),
            Step(
                "alges train again (resume)",
                _py("alges", *train, "--out", w / "run", "--resume"),
                (120, 90),
                ["alges train --preset alges_tiny"],
            ),
            Step(
                f"alges train DDP ({backend}, 1 process)",
                _ddp(w / "ddp.json", "alges", *train, "--out", w / "run_ddp"),
                (180, 120),
                ["alges synthetic data"],
                env=ddp_env,
                check=_ddp_check(w / "ddp.json", backend),
            ),
        ]
    )

    # device comparisons, paper-size steps, pinned copies (in-process; on CUDA one process each)
    names = [
        "lungcvt-features",
        "alges-embeddings",
        "paper-pocapnet",
        "paper-lungcvt",
        "paper-deepacc",
        "paper-kfgnet-classifier",
        "paper-kfgnet-detector",
        "paper-alges",
        "pinned-copy",
    ]
    if cuda:
        chains.append(
            [
                Step(n, [str(STEPS_PY), n, "--device", dev, "--step-timeout", "150"], (170, 170), inproc=True)
                for n in names
            ]
        )
    else:
        chains.append(
            [
                Step(
                    "in-process steps",
                    [str(STEPS_PY), *names, "--device", dev, "--step-timeout", "60"],
                    (240, 240),
                    inproc=True,
                )
            ]
        )
    return chains


def write_inputs(work: Path) -> None:
    """Config files the commands read (tiny sizes, one epoch)."""
    (work / "kfgnet").mkdir(parents=True, exist_ok=True)
    (work / "kfgnet" / "tiny.yaml").write_text(
        "clip:\n  num_frames: 16\n  size: 32\ntrain:\n  epochs: 1\n  epochs2: 0\n  batch_size: 4\n"
        "detector:\n  min_size: 64\n  max_size: 64\n  score_threshold: 0.0\n  epochs: 1\n"
    )
    (work / "deepacc").mkdir(parents=True, exist_ok=True)
    (work / "deepacc" / "tiny.yaml").write_text(
        "base: deepacc_tiny\nmodel:\n  min_size: 160\n  max_size: 160\n  box_batch_size_per_image: 32\n"
        "  rpn_post_nms_top_n_train: 100\n  rpn_post_nms_top_n_test: 60\ntrain:\n  epochs: 1\n  batch_size: 2\n"
        "  warmup_iters: 2\n"
    )
