"""Test helpers: where the real data samples live, a file server on 127.0.0.1 for download tests, and
:func:`strict_devices`, which catches a tensor created on the wrong device without a GPU."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ServedURL", "hub_headers", "serve_files", "shared_data_dir", "strict_devices"]


def shared_data_dir() -> Path | None:
    """The folder of real data samples, or None when absent.

    Order: ``$MEDREPRO_SHARED_DATA``; then ``../shared/data`` next to the repository root, found by walking up from
    the current directory and from this file to the first folder holding ``pyproject.toml`` and ``packages/``.
    """
    env = os.environ.get("MEDREPRO_SHARED_DATA")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for d in [start, *start.parents]:
            if (d / "pyproject.toml").is_file() and (d / "packages").is_dir():
                cand = d.parent / "shared" / "data"
                if cand.is_dir():
                    return cand
    return None


class ServedURL(str):
    """The base URL of :func:`serve_files` (``http://127.0.0.1:PORT``); ``.requests`` lists the paths asked for."""

    requests: list[str]


def hub_headers(path: Path | None) -> dict[str, str]:
    """Headers a Hugging Face Hub-like server sends, which huggingface_hub requires: a commit and the file's ETag.

    Use as ``serve_files(root, headers=hub_headers)`` with files laid out as ``root/<org>/<repo>/resolve/main/<file>``
    and ``HF_ENDPOINT`` pointed at the URL (in a fresh process: huggingface_hub reads it at import).
    """
    out = {"X-Repo-Commit": "a" * 40}
    if path is not None and path.is_file():
        out["ETag"] = '"' + hashlib.sha256(path.read_bytes()).hexdigest() + '"'
    return out


@contextlib.contextmanager
def serve_files(
    directory: str | Path,
    headers: Mapping[str, str] | Callable[[Path | None], Mapping[str, str]] | None = None,
) -> Iterator[ServedURL]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) for the duration of the block.

    Download code is tested against it instead of the internet: ``f"{url}/name-abc123.pth"``. Proxy variables are
    bypassed for loopback while the block runs. ``url.requests`` records every request path (e.g. to assert that a
    second call was served from the cache).

    Args:
        directory: the folder served as ``/``.
        headers: extra response headers, fixed or computed from the requested file's path (None when the path is
            not a file), e.g. :func:`hub_headers`.
    """
    directory = Path(directory)
    requests: list[str] = []

    class _Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test server
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            requests.append(self.path)
            super().do_GET()

        def end_headers(self) -> None:
            if headers is not None:
                if callable(headers):
                    p = Path(self.translate_path(self.path))
                    extra = headers(p if p.is_file() else None)
                else:
                    extra = headers
                for k, v in extra.items():
                    self.send_header(k, v)
            super().end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved = {k: os.environ.get(k) for k in ("no_proxy", "NO_PROXY")}
    for k in saved:
        os.environ[k] = ",".join(x for x in ("127.0.0.1", "localhost", saved[k]) if x)
    url = ServedURL(f"http://127.0.0.1:{server.server_address[1]}")
    url.requests = requests
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------------------------------
# device mixing
# --------------------------------------------------------------------------------------------------------------------
def _tensor_leaves(obj: Any, out: list) -> list:
    import torch

    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensor_leaves(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensor_leaves(v, out)
    return out


def _cross_device_ok() -> frozenset:
    """Ops that legally take tensors on two devices: copies, moves, indexing (CUDA accepts CPU indices) and what
    ``Module.to`` calls to swap parameters."""
    import torch

    T = torch.Tensor
    ops = {T.to, T.copy_, T.cpu, T.cuda, T.type_as, T.new_tensor, T.__getitem__, T.__setitem__, T.set_, torch.as_tensor}
    ops |= {f for f in (getattr(torch, "_has_compatible_shallow_copy_type", None),) if f is not None}
    return frozenset(ops)


@contextlib.contextmanager
def strict_devices(allow: Iterable[Callable] = ()) -> Iterator[None]:
    """Within the block, an op whose tensor inputs sit on two devices raises ``RuntimeError`` naming the op and both.

    CUDA refuses such ops, but a CPU-only test never sees it; run the path with ``device="meta"`` (or any non-CPU
    device) inside this block and a tensor built on the CPU beside it (``torch.ones(n)`` without ``device=``) is
    caught. As on CUDA, a 0-dim CPU tensor beside another device is allowed, and so are copies and moves (``to``,
    ``copy_``, ``cpu``, ``type_as``, ...) and CPU index tensors in ``x[idx]`` / ``x[idx] = v``.

    Args:
        allow: further torch functions / methods allowed to mix devices.

    Example:
        >>> import torch
        >>> with strict_devices():  # doctest: +SKIP
        ...     torch.zeros(3, device="meta") + torch.ones(3)  # RuntimeError: ... devices cpu and meta
    """
    from torch.overrides import TorchFunctionMode

    ok = _cross_device_ok() | frozenset(allow)

    class _StrictDevices(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
            kwargs = kwargs or {}
            if func not in ok:
                devices = {t.device for t in _tensor_leaves((args, kwargs), []) if not (t.dim() == 0 and t.is_cpu)}
                if len(devices) > 1:
                    names = " and ".join(sorted(str(d) for d in devices))
                    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
                    raise RuntimeError(
                        f"strict_devices: {name} got tensors on devices {names} (CUDA would refuse this op); "
                        "create the tensor on the other one's device (device=x.device) or move it with .to()"
                    )
            return func(*args, **kwargs)

    with _StrictDevices():
        yield
