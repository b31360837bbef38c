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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling gpu_check_plan, also when loaded by path
from gpu_check_plan import ROOT, Step, build_steps, write_inputs  # noqa: E402

__all__ = ["Result", "Runner", "Step", "build_steps", "main", "summary", "write_inputs"]


@dataclass
class Result:
    name: str
    status: str
    detail: str
    seconds: float | None = None


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
