"""Every command line's ``--help`` with the runtime alone (numpy and ONNX Runtime installed).

Each entry point runs in a subprocess whose imports of the extras' packages (torch, onnx, OpenCV,
Pillow, tritonclient, PyTriton, tqdm, matplotlib, ...) raise the ``ModuleNotFoundError`` of a
missing package (``tests/docs/runtime_only/sitecustomize.py``). ``--help`` must then exit 0 with
argparse's usage, or print one line naming the extra to install and exit 2: never a traceback.

The entry points are found, not listed: every ``if __name__ == "__main__"`` module under
``export/``, ``samples/``, ``serving/`` and ``benchmarks/``, and every console script in
pyproject.toml's ``[project.scripts]``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
RUNTIME_ONLY = Path(__file__).resolve().parent / "runtime_only"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
SCRIPTS = PYPROJECT["project"].get("scripts", {})
FOLDERS = ("export", "samples", "serving", "benchmarks")


def _main_modules() -> list[Path]:
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" not in path.parts and 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"):
                found.append(path.relative_to(REPO))
    return found


def _command(path: Path) -> list[str]:
    """How the README runs it: ``python path.py``, or ``python -m pkg.mod`` for modules with
    relative imports (serving/)."""
    text = (REPO / path).read_text(encoding="utf-8")
    if re.search(r"^\s*from \.", text, re.M):
        return [sys.executable, "-m", ".".join(path.with_suffix("").parts)]
    return [sys.executable, str(path)]


def _script_command(name: str) -> list[str]:
    """What the installed console script does: import the target and exit with its result."""
    module, _, attr = SCRIPTS[name].partition(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {attr}; sys.exit({attr}())"
    return [sys.executable, "-c", code]


def _run_runtime_only(command: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(RUNTIME_ONLY), str(REPO)]))
    return subprocess.run(
        [*command, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _check_help(result: subprocess.CompletedProcess) -> None:
    output = (result.stdout + result.stderr).strip()
    if result.returncode == 0:
        assert "usage:" in result.stdout, output[-2000:]
        assert "Traceback" not in output, output[-2000:]
        return
    lines = output.splitlines()
    assert result.returncode == 2 and len(lines) == 1, f"exit {result.returncode}:\n{output[-3000:]}"
    named = set(re.findall(r"\.\[([\w,-]+)\]", lines[0]))
    extras = {e for group in named for e in group.split(",")}
    assert extras and extras <= EXTRAS, f"the line names no extra of pyproject.toml: {lines[0]}"


def test_the_blocker_blocks_the_extras_and_keeps_the_runtime():
    """The stand-in environment is honest: the extras are missing there, the runtime is not."""
    probe = (
        "import importlib\n"
        "for m in ('torch', 'onnx', 'cv2', 'PIL.Image', 'tritonclient.http', 'pytriton', 'tqdm', 'matplotlib'):\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(m + ' imported')\n"
        "import numpy, onnxruntime, sdk\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(RUNTIME_ONLY), str(REPO)]))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_entry_points_are_found():
    found = {p.as_posix() for p in _main_modules()}
    for expected in ("export/build_engines.py", "samples/translate.py", "serving/client.py", "benchmarks/run.py"):
        assert expected in found


@pytest.mark.parametrize("path", _main_modules(), ids=lambda p: p.as_posix())
def test_help_with_the_runtime_alone(path):
    _check_help(_run_runtime_only(_command(path)))


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_with_the_runtime_alone(name):
    _check_help(_run_runtime_only(_script_command(name)))


def test_console_scripts_resolve_to_installed_packages():
    """Each ``[project.scripts]`` target is a ``main`` of a module inside a package that the
    distribution installs (``[tool.setuptools.packages.find]``), so it exists outside the checkout."""
    assert SCRIPTS, "pyproject.toml declares console scripts"
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for name, target in SCRIPTS.items():
        module, _, attr = target.partition(":")
        top = module.split(".")[0]
        assert any(re.fullmatch(pattern.replace("*", ".*"), top) for pattern in include), (name, target, include)
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, (name, target)
        assert re.search(rf"^def {attr}\(", Path(spec.origin).read_text(encoding="utf-8"), re.M), (name, target)


@pytest.mark.parametrize(
    "module,args",
    [
        ("serving.client", ["--image", "face.png", "--output", "out.png"]),
        ("serving.model_repository", ["--bundle", "engines/demo", "--out", "triton_models"]),
    ],
)
def test_serving_commands_without_the_serve_extra(module, args, tmp_path):
    """Run for real (not --help) without tritonclient and Pillow: one line naming the extra, exit 2."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(RUNTIME_ONLY), str(REPO)]))
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and '.[serve]"' in lines[0], result.stdout + result.stderr


def test_client_without_a_server_says_so(tmp_path):
    """With the extra installed and nothing listening: one line naming the URL, exit 1."""
    pytest.importorskip("tritonclient.http", reason="the serve extra")
    pytest.importorskip("PIL", reason="the serve extra")
    import socket

    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "face.png")
    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "serving.client", "--url", f"127.0.0.1:{port}"]
    command += ["--image", "face.png", "--output", "outputs/out.png"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and f"cannot reach Triton at 127.0.0.1:{port}" in lines[0], lines
    assert not (tmp_path / "outputs").exists()
