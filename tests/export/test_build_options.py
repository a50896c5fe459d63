"""The build's options (one BuildOptions for the command line and the API), its post-export
passes, and the command line without PyTorch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from export.build_engines import parse_args
from export.builder.options import BuildOptions

REPO = Path(__file__).resolve().parents[2]
# a child interpreter in which `import torch` fails, as on a runtime-only install
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.argv[0] = 'build_engines.py'; "


def test_the_parser_defaults_are_the_build_options_defaults():
    args = parse_args([])
    options = BuildOptions.from_args(args)
    assert options == BuildOptions()
    assert args.verbose is False


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["--max-batch", "4"], "max_batch", 4),
        (["--no-optimize"], "optimize", False),
        (["--quiet"], "progress", False),
        (["--precision", "fp16"], "precision", "fp16"),
        (["--tf32"], "tf32", True),
        (["--checkpoint", "a.pt"], "checkpoint", Path("a.pt")),
        (["--factor", "8"], "factor", 8),
    ],
)
def test_each_flag_sets_its_field(argv, field, value):
    options = BuildOptions.from_args(parse_args(argv))
    assert getattr(options, field) == value
    others = {f.name for f in dataclasses.fields(BuildOptions)} - {field}
    assert all(getattr(options, name) == getattr(BuildOptions(), name) for name in others)


def test_help_shows_the_defaults_of_the_options():
    help_text = " ".join(
        subprocess.run(
            [sys.executable, "export/build_engines.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "largest batch the graphs accept (default 8)" in help_text
    assert "--no-optimize" in help_text and "--quiet" in help_text and "--name" not in help_text


def test_the_formats_named_without_torch_are_the_loaders_formats():
    from export.checkpoints import formats, registry

    assert registry.FORMATS == formats.FORMATS


def test_an_unknown_option_of_the_api_is_refused():
    with pytest.raises(TypeError):
        BuildOptions().replace(max_batches=4)


@pytest.mark.parametrize("argv", [["--help"], ["--max-batch", "x"]])
def test_the_command_line_parses_without_torch(argv):
    code = NO_TORCH + "import runpy; runpy.run_path('export/build_engines.py', run_name='__main__')"
    run = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == (0 if argv == ["--help"] else 2), run.stderr
    assert "Traceback" not in run.stderr


def test_a_build_without_torch_names_the_export_extra(tmp_path):
    code = NO_TORCH + "import runpy; runpy.run_path('export/build_engines.py', run_name='__main__')"
    run = subprocess.run(
        [sys.executable, "-c", code, "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines == ['torch is not installed; pip install -e ".[export]"'], run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "options, tensorrt, expected",
    [
        (BuildOptions(), None, ["CPU-optimised graphs"]),
        (BuildOptions(optimize=False), None, []),
        (BuildOptions(precision="fp16"), None, ["fp16 graphs and loop accuracy"]),
        (BuildOptions(precision="fp16"), "10.9", ["fp16 graphs and loop accuracy", "TensorRT engines"]),
        (BuildOptions(), "10.9", ["CPU-optimised graphs", "TensorRT engines"]),
    ],
)
def test_which_passes_a_build_runs(monkeypatch, options, tensorrt, expected):
    from export.builder import bundle
    from export.tensorrt import engines

    monkeypatch.setattr(engines, "tensorrt_version", lambda: tensorrt)
    assert [p.name for p in bundle.PASSES if p.applies(options)] == expected


def test_the_rebuild_command_names_the_checkpoint_unless_it_is_the_demo(tmp_path):
    from export.demo import DEMO_CHECKPOINT
    from export.tensorrt.engines import rebuild_command

    out = tmp_path / "b"
    demo = rebuild_command(BuildOptions(checkpoint=DEMO_CHECKPOINT), out)
    assert demo == f"python export/build_engines.py --out {out} --precision fp32"
    other = rebuild_command(BuildOptions(checkpoint=Path("x.pt"), precision="fp16", tf32=True), out)
    assert other == f"python export/build_engines.py --checkpoint x.pt --out {out} --precision fp16 --tf32"
