"""Atomic builds (issue 5, area 4): a build killed at any point leaves the previous bundle
intact and nothing half-written that ``Bundle``/``Translator`` would accept.

* ``BundleWriter`` is killed (SIGKILL) at every file-system call it makes, one run per call,
  in a forked child: after each kill the target holds the old or the new bundle, complete.
* ``export/build_engines.py`` on a small real checkpoint is SIGKILLed at seeded random points
  and interrupted once with Ctrl-C (SIGINT); the previous bundle survives every time, and the
  temporary folders of killed builds are removed by the next build.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from sdk import BundleError, Translator
from sdk.bundle import MANIFEST, Bundle, BundleWriter

pytestmark = pytest.mark.slow(minutes=1.5)  # on 2 shared cores; conftest starts the longest first

REPO = Path(__file__).resolve().parents[2]


def manifest_hash(bundle: Path) -> str:
    return hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()


def temporaries(parent: Path, name: str) -> set[str]:
    return {p.name for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-") and not p.name.endswith(".lock")}


def assert_siblings_not_accepted_half_written(target: Path) -> None:
    """Every folder beside ``target`` is either refused by ``Bundle`` or complete (all hashes match)."""
    for entry in target.parent.iterdir():
        if entry.is_dir() and entry != target:
            try:
                Bundle(entry, verify=True)
            except BundleError:
                continue
            # it opened, so every file matches its hash: a complete bundle whose swap was cut short


def assert_opens(target: Path, expected_hash: str) -> None:
    assert manifest_hash(target) == expected_hash
    Bundle(target, verify=True)
    with Translator(target, backend="onnxruntime", threads=1) as t:
        x = np.zeros((1,) + t.input_shape, np.float32)
        assert np.isfinite(t.infer(x, iterations=1).images).all()


# --------------------------------------------------------------------------- BundleWriter, every call

CHILD = textwrap.dedent("""
    import json, os, shutil, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    import sdk.bundle as B

    src, target = Path(sys.argv[1]), Path(sys.argv[2])
    manifest = json.loads((src / "manifest.json").read_text())
    files = sorted(f for f in os.listdir(src) if f != "manifest.json")

    def install(kill_at):
        count = [0]
        def hook(fn):
            def wrapped(*args, **kwargs):
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                count[0] += 1
                return fn(*args, **kwargs)
            return wrapped
        for name in ("open", "mkdir", "replace", "rename", "unlink", "rmdir", "fsync"):
            setattr(os, name, hook(getattr(os, name)))
        shutil.copyfile = hook(shutil.copyfile)
        B._exchange = hook(B._exchange)

    k = 0
    while True:
        pid = os.fork()
        if pid == 0:
            install(k)
            with B.BundleWriter(target) as w:
                for f in files:
                    shutil.copyfile(src / f, w.path(f))
                    w.add(f)
                w.commit(manifest)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status)
        print(json.dumps({"kill_at": k, "killed": killed, "status": status}), flush=True)
        if sys.stdin.readline().strip() != "next" or not killed:
            break
        k += 1
""")


def test_writer_killed_at_every_file_system_call(tiny_graphs, tmp_path):
    old = tb.write_bundle(tmp_path / "old" / "bundle", tiny_graphs, "iterative")
    new = tb.write_bundle(tmp_path / "new" / "bundle", tiny_graphs, "two_stage")
    target = tmp_path / "engines" / "bundle"
    shutil.copytree(old, target)
    old_hash, new_hash = manifest_hash(old), manifest_hash(new)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(new), str(target), str(REPO)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    outcomes = []
    try:
        while True:
            report = json.loads(proc.stdout.readline())
            outcomes.append(report)
            # whatever the point, the target is a complete bundle: the old one, or the new one
            # once the swap happened; never missing, never a mixture
            assert manifest_hash(target) in (old_hash, new_hash), report
            assert_opens(target, manifest_hash(target))
            assert_siblings_not_accepted_half_written(target)
            # what earlier kills left behind was removed by this run's writer: at most this kill's
            leftovers = [p.name for p in target.parent.iterdir() if p.name != "bundle"]
            assert len(temporaries(target.parent, "bundle")) <= 1, (report, leftovers)
            assert len(leftovers) <= 2, (report, leftovers)  # one folder and its lock file
            if not report["killed"]:
                assert report["status"] == 0
                break
            if manifest_hash(target) != old_hash:  # start every run from the old bundle
                shutil.rmtree(target)
                shutil.copytree(old, target)
            proc.stdin.write("next\n")
            proc.stdin.flush()
            assert len(outcomes) < 500
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert len(outcomes) > 20 and all(o["killed"] for o in outcomes[:-1])  # really killed at many points
    assert manifest_hash(target) == new_hash
    assert [p.name for p in target.parent.iterdir()] == ["bundle"]  # the last run cleaned everything up


def test_cleanup_spares_a_build_in_progress(tiny_graphs, tmp_path):
    """A second writer removes dead builds' temporaries but not those of a writer still running."""
    target = tb.write_bundle(tmp_path / "bundle", tiny_graphs, "single")
    dead = tmp_path / ".bundle.tmp-dead"  # a killed build: its folder and an unlocked lock file
    dead.mkdir()
    (dead / "encoder.onnx").write_bytes(b"half")
    (tmp_path / ".bundle.tmp-dead.lock").touch()
    (tmp_path / ".bundle.tmp-older").mkdir()  # no lock file at all (an older SDK's build)
    (tmp_path / ".bundle.tmp-gone.lock").touch()  # a lock whose folder is gone
    (tmp_path / ".other.tmp-x").mkdir()  # another target's temporary: not ours to judge
    with BundleWriter(target) as running:
        running.path("a.bin").write_bytes(b"in progress")
        with BundleWriter(target) as second:
            assert running.tmp.is_dir() and (running.tmp / "a.bin").read_bytes() == b"in progress"
            assert not dead.exists() and not (tmp_path / ".bundle.tmp-dead.lock").exists()
            assert not (tmp_path / ".bundle.tmp-older").exists()
            assert not (tmp_path / ".bundle.tmp-gone.lock").exists()
            assert temporaries(tmp_path, "bundle") == {running.tmp.name, second.tmp.name}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x", "bundle"]
    Bundle(target)


def test_swap_never_leaves_the_target_missing(tiny_graphs, tmp_path, monkeypatch):
    """Where the atomic exchange is unavailable, a crash between the two renames is repaired by
    the next writer (and the exchange path leaves no ``.old`` folder at all)."""
    import sdk.bundle as bundle_mod

    target = tb.write_bundle(tmp_path / "bundle", tiny_graphs, "iterative")
    before = manifest_hash(target)
    monkeypatch.setattr(bundle_mod, "_exchange", lambda a, b: False)
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after the old bundle moved aside, before the new one moved in
        return real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        tb.write_bundle(target, tiny_graphs, "single")
    monkeypatch.setattr(bundle_mod.os, "replace", real_replace)
    assert not target.exists() and (tmp_path / ".bundle.old").is_dir()
    BundleWriter(target).__exit__(None, None, None)  # any next writer restores it
    assert manifest_hash(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --------------------------------------------------------------------------- build_engines.py, killed


def _start_build(ckpt: Path, target: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(REPO / "export" / "build_engines.py"),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(target),
        "--quiet",
        "--max-batch",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_new_temporary(proc, target: Path, before: set[str], limit: float = 120.0) -> bool:
    """Poll until the build created its temporary folder; False if it exited first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if temporaries(target.parent, target.name) - before:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("the build never started writing")


def test_build_engines_killed_at_random_points(tiny_graphs, tmp_path):
    from helpers.psp_checkpoints import write_psp_checkpoint

    ckpt = tmp_path / "psp_w.pt"
    write_psp_checkpoint(ckpt, "BackboneEncoderUsingLastLayerIntoW", 3, {"learn_in_w": True})
    target = tmp_path / "engines" / "bundle"
    tb.write_bundle(target, tiny_graphs, "iterative")  # the previous bundle
    previous = manifest_hash(target)
    rng = random.Random(5)
    kills = 0
    for attempt in range(4):
        before = temporaries(target.parent, target.name)
        proc = _start_build(ckpt, target)
        if attempt == 0:
            time.sleep(rng.uniform(0.2, 2.0))  # while importing and loading the checkpoint
        elif _wait_for_new_temporary(proc, target, before):
            time.sleep(rng.uniform(0.0, 12.0))  # somewhere in export, parity checks or commit
        proc.kill()
        rc = proc.wait(timeout=60)
        if rc == 0:  # finished before the kill: its bundle is the previous one from now on
            previous = manifest_hash(target)
        else:
            assert rc == -signal.SIGKILL, proc.stderr.read()[-2000:]
            kills += 1
        assert_opens(target, previous)
        assert_siblings_not_accepted_half_written(target)
    assert kills >= 3
    assert temporaries(target.parent, target.name)  # the killed builds left their temporaries...

    # Ctrl-C: the build stops, says so, removes its temporary folder; the previous bundle stays
    before = temporaries(target.parent, target.name)
    proc = _start_build(ckpt, target)
    started = _wait_for_new_temporary(proc, target, before)
    assert started, proc.stderr.read()[-2000:]
    time.sleep(rng.uniform(0.5, 4.0))
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    if rc == 0:
        previous = manifest_hash(target)
    else:
        assert rc == 130 and "interrupted; the previous bundle (if any) is untouched" in err, err[-2000:]
    assert_opens(target, previous)
    # ...and the interrupted build's writer removed them (and its own) when it started and stopped
    assert sorted(p.name for p in target.parent.iterdir()) == ["bundle"]


_CTRL_C_BUILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from export import build_engines
    from export.builder import bundle

    library_converts = sys.argv[2] == "1"

    def interrupted_export(options):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            if library_converts:
                raise RuntimeError("Failed to export the model with torch.export") from None
            raise
        raise AssertionError("SIGINT was not delivered")

    bundle.build = interrupted_export
    previous = signal.getsignal(signal.SIGINT)
    rc = build_engines.main(["--quiet"])
    print(json.dumps({"rc": rc, "handler_restored": signal.getsignal(signal.SIGINT) is previous}))
    """
)


@pytest.mark.parametrize("library_converts", [False, True])
def test_ctrl_c_is_reported_even_when_a_library_rewraps_it(library_converts):
    """torch.export catches a KeyboardInterrupt raised inside it and reports a failed export
    instead; the build must still exit as interrupted (130), not as a failed build. In a child
    process: a real SIGINT, not the test runner's."""
    out = subprocess.run(
        [sys.executable, "-c", _CTRL_C_BUILD, str(REPO), "1" if library_converts else "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"rc": 130, "handler_restored": True}  # the build's handler is gone again
    assert "interrupted; the previous bundle (if any) is untouched" in out.stderr
