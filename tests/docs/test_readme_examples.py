"""The README's and docs' examples run, and the paths and links they name exist.

Every ```python block of README.md, engines/README.md and docs/*.md, and every ``python -c``
one-liner in their ```bash blocks, runs in a folder whose ``engines/demo`` is a tiny
super-resolution bundle (the same API as the demo's, built in a second). A block that cannot run
here (it needs a GPU, a server or your own checkpoints) is marked by an HTML comment on the line
before it, ``<!-- not-run: the reason -->``; every unmarked block must run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from helpers import tiny_bundle

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO / "README.md", REPO / "engines" / "README.md", *(REPO / "docs").glob("*.md")])
# pages whose repository paths and links are checked (the others are generated or measured records)
CHECKED = ("README.md", "engines/README.md", "docs/install.md", "docs/python_api.md", "docs/building.md",
           "docs/demo_model.md", "docs/cpu_optimisations.md")  # fmt: skip

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$")


def _blocks(path: Path) -> list[tuple[str, int, str, str | None]]:
    """(language, line, code, not-run reason or None) of each fenced block of ``path``."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        marker = NOT_RUN.search(before[-1]) if before else None
        line = text.count("\n", 0, m.start()) + 1
        found.append((m.group(1), line, m.group(2), marker.group(1) if marker else None))
    return found


def _one_liners(code: str) -> list[str]:
    """The Python source of each ``python -c "..."`` command in a shell block."""
    sources = []
    for line in code.splitlines():
        words = shlex.split(line, comments=True) if "python -c" in line else []
        if len(words) >= 3 and words[:2] == ["python", "-c"]:
            sources.append(words[2])
    return sources


def _examples() -> list:
    cases = []
    for path in DOCUMENTS:
        name = path.relative_to(REPO).as_posix()
        for language, line, code, reason in _blocks(path):
            if reason is not None:
                continue
            if language == "python":
                cases.append(pytest.param(code, id=f"{name}:{line}"))
            elif language in ("bash", "sh", "shell"):
                cases += [pytest.param(src, id=f"{name}:{line}:python-c") for src in _one_liners(code)]
    return cases


@pytest.fixture(scope="module")
def demo_folder(tiny_graphs, tmp_path_factory) -> Path:
    """A working folder whose engines/demo is a tiny x4 super-resolution bundle."""
    root = tmp_path_factory.mktemp("readme")
    tiny_bundle.write_bundle(root / "engines" / "demo", tiny_graphs, "iterative", task="super_resolution", factor=4)
    return root


@pytest.mark.parametrize("code", _examples())
def test_example_runs(code, demo_folder, monkeypatch, capsys):
    monkeypatch.chdir(demo_folder)
    try:
        exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})  # noqa: S102 - our own docs
    except Exception as e:
        hint = "fix the example, or put <!-- not-run: the reason --> on the line before it if it cannot run here"
        pytest.fail(f"{type(e).__name__}: {e}\n{hint}")


def test_readme_has_examples_that_run():
    """The README's Python examples are run, not all marked away; every mark gives a reason."""
    blocks = _blocks(REPO / "README.md")
    assert any(lang == "python" and reason is None for lang, _, _, reason in blocks)
    for path in DOCUMENTS:
        for _, line, _, reason in _blocks(path):
            assert reason is None or reason.strip(), f"{path.name}:{line}: a not-run mark names its reason"


def test_one_liners_are_found():
    assert _one_liners('python -c "print(1)"  # note\nls\n') == ["print(1)"]


# --------------------------------------------------------------------------- paths and links

LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:sdk|export|samples|serving|benchmarks|tests|docs)/[\w./-]*[\w/])")


def _missing_targets(page: str) -> list[str]:
    path = REPO / page
    text = path.read_text(encoding="utf-8")
    # the generated performance section quotes the measured run's labels as they were
    text = re.sub(r"<!-- performance:begin.*?<!-- performance:end -->", "", text, flags=re.S)
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            missing.append(f"link {target}")
    for name in REPO_PATH.findall(text):
        if "*" in name or "<" in name:
            continue
        if not (REPO / name).exists():
            missing.append(f"path {name}")
    return list(dict.fromkeys(missing))


@pytest.mark.parametrize("page", CHECKED)
def test_paths_and_links_exist(page):
    """Files the page names (``export/build_engines.py``, ``docs/gpu.md``) and its relative links
    exist: a moved file is found here, not by a reader."""
    assert _missing_targets(page) == []


def test_readme_is_short():
    """A front page read in minutes; the rest lives in docs/."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.split()) < 1500
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if not p.lstrip().startswith(("|", "```", "<!--"))]
    assert max(len(p.split()) for p in paragraphs) < 120
