"""One command for the first GPU session: every package's CUDA paths, resume, DDP (one process), precisions.

``bash scripts/gpu_check.sh`` (this file) runs, without any download (all weights random, ``MEDREPRO_OFFLINE=1``):

1. each package's tiny training command(s) on the device (pocapnet ``make-synthetic`` / ``extract`` / ``train``,
   kfgnet ``train-detector`` / ``train-keyframe`` / ``train-classifier``, deepacc ``train --model deepacc_tiny``,
   lungcvt ``train --preset lungcvt_tiny``, alges ``train --preset alges_tiny``) on synthetic data, then the same
   commands again into the same folders (resume);
2. each package's training through the real DDP path in one process (``MEDREPRO_FORCE_DDP=1``: nccl on CUDA, gloo
   on the CPU), checked by recording the process group and the DDP wrap (``scripts/ddp_probe.py``);
3. lungcvt features and alges embeddings on the device against the CPU; one training step of each package's
   paper-size model (random weights) in fp32, TF32 and bf16 with time, peak memory and error against fp32; a pinned
   vs pageable copy of a pocapnet training chunk (``scripts/gpu_check_steps.py``).

One line per step (PASS / FAIL / SKIP with the reason), a summary table at the end, exit status 1 on any FAIL.
``--cpu`` runs the same steps on the CPU at tiny sizes with one thread per process; what only means something on
CUDA (TF32, pinned copies) is a SKIP, DDP runs on gloo. Every step has its own timeout.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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


@dataclass
class Result:
    name: str
    status: str
    detail: str
    seconds: float | None = None


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


class Runner:
    def __init__(self, work: Path, env: dict[str, str], cuda: bool) -> None:
        self.work, self.env, self.cuda = work, env, cuda
        self.results: dict[str, list[Result]] = {}
        self.passed: set[str] = set()
        self.lock = threading.Lock()
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def report(self, step: Step, results: list[Result]) -> None:
        with self.lock:
            self.results[step.name] = results
            if results and all(r.status != "FAIL" for r in results):
                self.passed.add(step.name)
            for r in results:
                secs = f" [{r.seconds:.1f} s]" if r.seconds is not None else ""
                print(f"{r.status:<4}  {r.name}{secs}: {r.detail}", flush=True)

    def run_chain(self, chain: list[Step]) -> None:
        for step in chain:
            missing = [n for n in step.needs if n not in self.passed]
            if missing:
                self.report(step, [Result(step.name, "SKIP", f"needs {', '.join(missing)}, which did not pass")])
                continue
            self.report(step, self.run(step))

    def run(self, step: Step) -> list[Result]:
        timeout = step.timeout[0 if self.cuda else 1]
        log = self.work / "logs" / (step.name.replace(" ", "_").replace("/", "_") + ".log")
        env = {**self.env, **step.env}
        t0 = time.perf_counter()
        with open(log, "w", encoding="utf-8") as f:
            f.write("$ python " + " ".join(step.argv) + "\n")
            f.flush()
            proc = subprocess.Popen(
                [sys.executable, *step.argv],
                cwd=self.work,
                env=env,
                stdout=subprocess.PIPE if step.inproc else f,
                stderr=f,
                text=True,
                start_new_session=True,
            )
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
                timed_out = True
            else:
                timed_out = False
        secs = time.perf_counter() - t0
        if step.inproc:
            return self._inproc_results(step, out or "", proc.returncode, timed_out, timeout, log, secs)
        if timed_out:
            return [Result(step.name, "FAIL", f"timed out after {timeout} s (log: {log})", secs)]
        if proc.returncode != 0:
            return [Result(step.name, "FAIL", f"exit {proc.returncode}: {_last_error(log)} (log: {log})", secs)]
        missing = [str(p.relative_to(self.work)) for p in step.expect if not p.exists()]
        if missing:
            return [Result(step.name, "FAIL", f"exit 0 but missing {', '.join(missing)} (log: {log})", secs)]
        problem = step.check() if step.check else None
        if problem:
            return [Result(step.name, "FAIL", f"{problem} (log: {log})", secs)]
        detail = "exit 0"
        if step.check is not None:
            detail += ", DDP process group and wrap recorded"
        return [Result(step.name, "PASS", detail, secs)]

    def _inproc_results(
        self, step: Step, out: str, rc: int, timed_out: bool, timeout: int, log: Path, secs: float
    ) -> list[Result]:
        with open(log, "a", encoding="utf-8") as f:
            f.write(out)
        results: list[Result] = []
        pending: list[Result] = []
        for line in out.splitlines():
            if line.startswith("@@GPUCHECK "):
                d = json.loads(line.removeprefix("@@GPUCHECK "))
                pending.append(Result(d["name"], d["status"], d["detail"]))
            elif line.startswith("@@STEPTIME ") and pending:
                pending[0].seconds = float(line.split()[-1])  # the step's wall time, on its first line
                results += pending
                pending = []
        results += pending
        if timed_out:
            results.append(Result(step.name, "FAIL", f"timed out after {timeout} s (log: {log})", secs))
        elif rc != 0 and not any(r.status == "FAIL" for r in results):
            results.append(Result(step.name, "FAIL", f"exit {rc}: {_last_error(log)} (log: {log})", secs))
        if not results:
            results.append(Result(step.name, "FAIL", f"no result (log: {log})", secs))
        return results


def _last_error(log: Path) -> str:
    """The last line of a log that looks like an error (else its last line), shortened."""
    try:
        lines = [x.strip() for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    for x in reversed(lines):
        if "error" in x.lower() or "exception" in x.lower():
            return x[:300]
    return lines[-1][:300] if lines else "no output"


def summary(order: list[str], results: dict[str, list[Result]], device: str) -> str:
    rows = [r for name in order for r in results.get(name, [])]
    width = max([len(r.name) for r in rows] + [4])
    lines = [
        f"gpu_check summary ({device})",
        f"| {'step':<{width}} | status | seconds | detail |",
        f"|{'-' * (width + 2)}|--------|---------|--------|",
    ]
    for r in rows:
        secs = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        lines.append(f"| {r.name:<{width}} | {r.status:<6} | {secs:>7} | {r.detail} |")
    n = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    lines.append(f"{n['PASS']} PASS, {n['FAIL']} FAIL, {n['SKIP']} SKIP")
    return "\n".join(lines)


def device_name(cuda: bool) -> str:
    import platform

    if not cuda:
        from medshared.precision import cpu_model

        return f"CPU: {cpu_model()}"
    import torch

    p = torch.cuda.get_device_properties(0)
    mem = p.total_memory / 2**30
    return f"{p.name}, {mem:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda} ({platform.node()})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="the same steps on the CPU at tiny sizes (SKIP: CUDA-only ones)")
    ap.add_argument("--device", default="cuda", help="CUDA device (default cuda = cuda:0); ignored with --cpu")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder (logs, runs)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="package chains side by side (default 2); the timed precision steps run alone after them",
    )
    ap.add_argument("--only", default="", help="comma-separated words: run only chains whose steps' names contain one")
    a = ap.parse_args(argv)
    cuda = not a.cpu
    if cuda:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (torch.cuda.is_available() is False); run with --cpu", file=sys.stderr)
            return 2
    dev = a.device if cuda else "cpu"
    work = a.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_inputs(work)
    env = dict(os.environ)
    env.update({"MEDREPRO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env["MEDREPRO_CACHE_DIR"] = str(work / "cache")  # never the user's precision cache
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT / "scripts"), env.get("PYTHONPATH", "")) if x)
    if not cuda:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(k, "1")
        env.setdefault("MEDREPRO_PRECISION", "fp32")  # auto would measure each command's probe: seconds apiece
        env["CUDA_VISIBLE_DEVICES"] = ""
    chains = build_steps(work, dev)
    if a.only:
        words = [x.strip() for x in a.only.split(",") if x.strip()]
        chains = [c for c in chains if any(w in s.name for s in c for w in words)]
    order = [s.name for c in chains for s in c]
    name = device_name(cuda)
    print(f"gpu_check on {name}; work folder {work}", flush=True)
    t0 = time.perf_counter()
    runner = Runner(work, env, cuda)
    jobs = max(1, a.jobs or 2)
    # on CUDA the timed precision steps run alone after the rest: nothing else on the device meanwhile
    alone = [c for c in chains if cuda and all(st.inproc for st in c)]
    shared = [c for c in chains if c not in alone]
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        for fut in [pool.submit(runner.run_chain, c) for c in shared]:
            fut.result()
    for c in alone:
        runner.run_chain(c)
    print()
    print(summary(order, runner.results, name))
    print(f"total {time.perf_counter() - t0:.0f} s")
    failed = any(r.status == "FAIL" for rs in runner.results.values() for r in rs)
    if a.work is None and not a.keep and not failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs: {work / 'logs'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
