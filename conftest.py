"""Workspace-wide test plumbing for every package's tests.

- One torch thread per test, restored afterwards: the tests run tiny tensors where thread synchronisation dominates,
  and on a busy 2-core machine the default thread count made the suite 6-10x slower (29 min 50 s instead of 4.5 min
  measured). A test that measures threading carries ``@pytest.mark.threads`` and is left alone.
- Tests never reach the network: a socket connecting anywhere but loopback (127.0.0.0/8, ::1) or a Unix socket
  raises, naming the address. Download paths are tested against ``medshared.testing.serve_files`` on 127.0.0.1.
- ``@pytest.mark.gpu`` tests are skipped, with the reason, when ``torch.cuda.is_available()`` is False.
- Tests never touch the user's precision cache: ``MEDREPRO_CACHE_DIR`` points at a session temp folder (one CPU
  measurement per key per session; a test that checks measuring sets its own); ``MEDREPRO_PRECISION`` and
  ``MEDREPRO_FORCE_DDP`` are unset (a test that wants them sets them).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator

import pytest

GPU_SKIP_REASON = "gpu test: no CUDA device (torch.cuda.is_available() is False); run it on a machine with a GPU"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests without CUDA (torch is imported only when such a test was collected)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in gpu_items:
        item.add_marker(skip)


def _loopback(address: object) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path (str / bytes)
        return True
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        return False


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> Iterator[None]:
    orig_connect, orig_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def _check(address: object) -> None:
        if not _loopback(address):
            raise ConnectionRefusedError(
                f"tests may only connect to 127.0.0.1 / ::1, not {address!r} (root conftest.py); "
                "serve the file with medshared.testing.serve_files"
            )

    def connect(self: socket.socket, address: object) -> None:
        _check(address)
        return orig_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        _check(address)
        return orig_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = orig_connect, orig_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="session")
def _private_precision_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``medshared.precision`` caches in a session temp folder, with no env overrides (subprocesses inherit it)."""
    saved = {k: os.environ.get(k) for k in ("MEDREPRO_CACHE_DIR", "MEDREPRO_PRECISION", "MEDREPRO_FORCE_DDP")}
    os.environ["MEDREPRO_CACHE_DIR"] = str(tmp_path_factory.mktemp("medrepro-cache"))
    os.environ.pop("MEDREPRO_PRECISION", None)
    os.environ.pop("MEDREPRO_FORCE_DDP", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread_session() -> Iterator[int]:
    """One thread from the start, so session fixtures that build data (set up before any per-test fixture) get it.
    Yields the process's own thread count, which ``@pytest.mark.threads`` tests get back."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_torch_thread(request: pytest.FixtureRequest, _one_torch_thread_session: int) -> Iterator[None]:
    """Each test starts on one thread (marked ``threads``: the default count); whatever it sets is undone."""
    import torch

    want = _one_torch_thread_session if request.node.get_closest_marker("threads") is not None else 1
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(1)
