"""The workspace contract: every member imports, every console script answers --help, each package installs alone
into a fresh virtual environment, and the lock file is current."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pocapnet", "lungcvt", "deepacc", "kfgnet", "alges"]


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        pytest.skip("uv is not on PATH (install it with `pip install uv`)")
    return uv


@pytest.mark.parametrize("name", ["medshared", *PACKAGES])
def test_member_imports(name):
    mod = importlib.import_module(name)
    assert mod.__version__ == importlib.metadata.version(name)  # the code and the installed metadata agree


@pytest.mark.parametrize("name", PACKAGES)
def test_console_script_help(name):
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"console script {name} is not installed in {script.parent}"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert name in r.stdout
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and importlib.metadata.version(name) in r.stdout


@pytest.mark.parametrize("name", PACKAGES)
def test_python_dash_m_entry_for_torchrun(name, monkeypatch, capsys):
    """`torchrun -m <pkg> train ...` needs `<pkg>/__main__.py` running the CLI's main()."""
    import runpy

    assert importlib.util.find_spec(f"{name}.__main__") is not None, f"{name} has no __main__.py"
    monkeypatch.setattr(sys, "argv", [name, "--version"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(name, run_name="__main__")
    assert e.value.code in (0, None) and importlib.metadata.version(name) in capsys.readouterr().out


@pytest.mark.parametrize("name", PACKAGES)
def test_main_without_command_is_an_error(name):
    cli = importlib.import_module(f"{name}.cli")
    assert cli.main([]) != 0


def test_uv_lock_is_current():
    r = subprocess.run([_uv(), "lock", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", PACKAGES)
def test_package_installs_alone(name, tmp_path):
    """`uv pip install packages/<pkg>` into a fresh venv resolves medshared and gives a working console script."""
    uv = _uv()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env, timeout=300)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(py), str(ROOT / "packages" / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(venv / "bin" / name), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", PACKAGES)
def test_package_installs_without_workspace(name, tmp_path):
    """The pip way (`pip install shared packages/<pkg>`), here `uv pip install --no-sources`: the metadata alone is
    complete, and medshared is a real installed copy, not the source tree."""
    uv = _uv()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env, timeout=300)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--no-sources",
            "--python",
            str(py),
            str(ROOT / "shared"),
            str(ROOT / "packages" / name),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    code = f"import medshared, {name}.cli as c; print(medshared.__file__); c.main(['--help'])"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert str(venv) in r.stdout.splitlines()[0], r.stdout
