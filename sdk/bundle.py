"""The bundle: a folder holding ``manifest.json``, the ONNX graphs, engines and constants.

The manifest is the contract between ``export/build_engines.py`` (which writes it) and
:class:`sdk.Translator` (which reads it). It describes the graphs by their I/O *roles* and
the refinement loop as a *schedule* of stages, so a new model family is new manifest data,
not a new code path in the runtime.

Layout of ``manifest.json`` (schema version 1)::

    schema_version   1
    name, family     e.g. "demo", "restyle_fpn"
    task             {"name": "inversion" | "super_resolution", "options": {...}}
    input            {"channels": C_x, "size": S, "range": [lo, hi]}
    output           {"channels": 3, "size": R, "range": [-1, 1]}
    latent           {"count": M, "dim": D}
    batch            {"min": 1, "max": B}
    graphs           {name: {"file", "sha256", "precision", "inputs": [io], "outputs": [io]}}
                     io = {"name", "role", "shape", "dtype"}; role in condition/image/latents
                     (loop graphs), sample/style (the optional "mapping" graph z -> w)
    constants        {"file", "sha256", "arrays": {"latent_avg": [M, D], "average_image": [3, R, R]}}
    schedule         {"stages": [{"graph", "feedback", "residual"}], "repeat_last": bool,
                      "default_iterations": N}
    engines          {name: {"file", "sha256", "tensorrt", "compute_capability", ...}} (optional)
    parity, build    what the export measured and with which tools (informational)
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import BundleError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# sample: a random z [batch, D] into the mapping graph; style: one W code [batch, D] out of it
ROLES = ("condition", "image", "latents", "sample", "style")
MAX_ITERATIONS = 1000  # bounds repeating schedules, so a typo cannot hang the caller's thread
REBUILD_HINT = "rebuild it with: python export/build_engines.py --checkpoint CKPT --out {path}"


# --------------------------------------------------------------------------- schema

@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name in the graph, its role in the loop, shape, dtype."""

    name: str
    role: str
    shape: tuple  # ints, or strings for symbolic dims ("batch")
    dtype: str

    @classmethod
    def parse(cls, raw: Any, where: str) -> "TensorSpec":
        _expect(raw, dict, where)
        spec = cls(name=_field(raw, "name", str, where), role=_field(raw, "role", str, where),
                   shape=tuple(_field(raw, "shape", list, where)), dtype=_field(raw, "dtype", str, where))
        if spec.role not in ROLES:
            raise BundleError(f"{where}.role is {spec.role!r}; expected one of {ROLES}")
        if spec.dtype not in ("float32", "float16"):
            raise BundleError(f"{where}.dtype is {spec.dtype!r}; expected float32 or float16")
        for d in spec.shape:
            if not (isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d > 0)):
                raise BundleError(f"{where}.shape has {d!r}; expected positive ints or names")
        return spec

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """The shape with every symbolic dim (only the batch may be symbolic) set to ``batch``."""
        return tuple(batch if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle and its I/O contract."""

    key: str
    file: str
    sha256: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def parse(cls, key: str, raw: Any) -> "GraphSpec":
        where = f"graphs.{key}"
        _expect(raw, dict, where)
        ins = tuple(TensorSpec.parse(r, f"{where}.inputs[{i}]")
                    for i, r in enumerate(_field(raw, "inputs", list, where)))
        outs = tuple(TensorSpec.parse(r, f"{where}.outputs[{i}]")
                     for i, r in enumerate(_field(raw, "outputs", list, where)))
        if len(outs) != 1:
            raise BundleError(f"{where} has {len(outs)} outputs; expected exactly one")
        roles = [t.role for t in ins]
        if len(set(roles)) != len(roles):
            raise BundleError(f"{where} binds a role twice: {roles}")
        return cls(key=key, file=_field(raw, "file", str, where), sha256=_field(raw, "sha256", str, where),
                   precision=raw.get("precision", "fp32"), inputs=ins, outputs=outs)

    def input(self, role: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.role == role), None)

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]


@dataclass(frozen=True)
class Stage:
    """One step of the refinement schedule.

    ``graph``: the encoder step graph to run. ``feedback``: whether it takes the previous
    synthesised image. ``residual``: whether its output is added to the previous latents
    (inside the graph; the flag documents it and the loop checks the graph takes latents).
    """

    graph: str
    feedback: bool
    residual: bool


@dataclass(frozen=True)
class Schedule:
    """The stages of the loop. Iteration ``t`` runs ``stages[t]``; past the end, the last
    stage repeats when ``repeat_last`` (ReStyle, OME), else the schedule is exhausted (pSp:
    one stage; E2Style: one stage per trained encoder)."""

    stages: tuple[Stage, ...]
    repeat_last: bool
    default_iterations: int

    @property
    def max_iterations(self) -> int | None:
        return None if self.repeat_last else len(self.stages)

    def stage(self, t: int) -> Stage:
        return self.stages[min(t, len(self.stages) - 1)]


@dataclass(frozen=True)
class Manifest:
    raw: Mapping[str, Any]
    name: str
    family: str
    task: str
    task_options: Mapping[str, Any]
    input_channels: int
    input_size: int
    input_range: tuple[float, float]
    output_size: int
    latent_count: int
    latent_dim: int
    batch_min: int
    batch_max: int
    graphs: Mapping[str, GraphSpec]
    schedule: Schedule
    constants_file: str
    constants_sha256: str

    @classmethod
    def parse(cls, raw: Any) -> "Manifest":
        _expect(raw, dict, "manifest")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise BundleError(f"manifest schema_version is {version!r}; this SDK reads version "
                              f"{SCHEMA_VERSION}. Rebuild the bundle with this version's export/build_engines.py")
        task = _field(raw, "task", dict, "manifest")
        inp, out = _field(raw, "input", dict, "manifest"), _field(raw, "output", dict, "manifest")
        latent, batch = _field(raw, "latent", dict, "manifest"), _field(raw, "batch", dict, "manifest")
        graphs = {k: GraphSpec.parse(k, v) for k, v in _field(raw, "graphs", dict, "manifest").items()}
        sched_raw = _field(raw, "schedule", dict, "manifest")
        stages = []
        for i, s in enumerate(_field(sched_raw, "stages", list, "schedule")):
            where = f"schedule.stages[{i}]"
            _expect(s, dict, where)
            stages.append(Stage(graph=_field(s, "graph", str, where), feedback=_field(s, "feedback", bool, where),
                                residual=_field(s, "residual", bool, where)))
        if not stages:
            raise BundleError("schedule.stages is empty; expected at least one stage")
        schedule = Schedule(stages=tuple(stages), repeat_last=_field(sched_raw, "repeat_last", bool, "schedule"),
                            default_iterations=_field(sched_raw, "default_iterations", int, "schedule"))
        consts = _field(raw, "constants", dict, "manifest")
        rng = _field(inp, "range", list, "input")
        if len(rng) != 2 or not all(_finite_number(v) for v in rng) or not float(rng[0]) < float(rng[1]):
            raise BundleError(f"input.range is {rng!r}; expected [lo, hi], two finite numbers with lo < hi")
        options = task.get("options", {}) or {}
        _expect(options, dict, "task.options")
        m = cls(raw=raw, name=str(raw.get("name", "")), family=_field(raw, "family", str, "manifest"),
                task=_field(task, "name", str, "task"), task_options=options,
                input_channels=_field(inp, "channels", int, "input"), input_size=_field(inp, "size", int, "input"),
                input_range=(float(rng[0]), float(rng[1])), output_size=_field(out, "size", int, "output"),
                latent_count=_field(latent, "count", int, "latent"), latent_dim=_field(latent, "dim", int, "latent"),
                batch_min=_field(batch, "min", int, "batch"), batch_max=_field(batch, "max", int, "batch"),
                graphs=graphs, schedule=schedule, constants_file=_field(consts, "file", str, "constants"),
                constants_sha256=_field(consts, "sha256", str, "constants"))
        m._check_consistency()
        return m

    def _check_consistency(self) -> None:
        if "generator" not in self.graphs:
            raise BundleError("manifest.graphs has no 'generator' graph")
        gen = self.graphs["generator"]
        if gen.input("latents") is None or gen.output.role != "image":
            raise BundleError("graphs.generator must map role 'latents' to role 'image'")
        for i, st in enumerate(self.schedule.stages):
            g = self.graphs.get(st.graph)
            if g is None:
                raise BundleError(f"schedule.stages[{i}] names graph {st.graph!r}, which manifest.graphs lacks")
            if g.input("condition") is None or g.output.role != "latents":
                raise BundleError(f"graphs.{st.graph} must take role 'condition' and output role 'latents'")
            if st.feedback != (g.input("image") is not None):
                raise BundleError(f"schedule.stages[{i}].feedback={st.feedback} but graphs.{st.graph} "
                                  f"{'lacks' if st.feedback else 'has'} an 'image' input")
            if st.residual and g.input("latents") is None:
                raise BundleError(f"schedule.stages[{i}] is residual but graphs.{st.graph} takes no latents")
        role_dims = {"condition": (self.input_channels, self.input_size, self.input_size),
                     "image": (3, self.output_size, self.output_size), "latents": (self.latent_count, self.latent_dim),
                     "sample": (self.latent_dim,), "style": (self.latent_dim,)}
        mapping = self.graphs.get("mapping")
        if mapping is not None and (mapping.input("sample") is None or mapping.output.role != "style"):
            raise BundleError("graphs.mapping must map role 'sample' to role 'style'")
        for g in self.graphs.values():
            for where, t in [(f"graphs.{g.key}.inputs[{i}]", t) for i, t in enumerate(g.inputs)] + \
                            [(f"graphs.{g.key}.outputs[0]", g.output)]:
                b = t.shape[0] if t.shape else None
                batch_ok = isinstance(b, str) or b == self.batch_min == self.batch_max
                if not batch_ok or tuple(t.shape[1:]) != role_dims[t.role]:
                    raise BundleError(f"{where}.shape is {list(t.shape)}; its role {t.role!r} needs "
                                      f"[batch, {', '.join(map(str, role_dims[t.role]))}] (from the manifest's "
                                      f"input/output/latent fields)")
        if not 1 <= self.schedule.default_iterations <= (self.schedule.max_iterations or MAX_ITERATIONS):
            raise BundleError(f"schedule.default_iterations={self.schedule.default_iterations} is outside "
                              f"1..{self.schedule.max_iterations or MAX_ITERATIONS}")
        if not 1 <= self.batch_min <= self.batch_max:
            raise BundleError(f"batch range {self.batch_min}..{self.batch_max} is empty")


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int beyond float's range
        return False


def _expect(value: Any, kind: type, where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{where} is {type(value).__name__}; expected {kind.__name__}")


def _field(raw: Mapping, key: str, kind: type, where: str) -> Any:
    if key not in raw:
        raise BundleError(f"{where} lacks the required field {key!r}")
    _expect(raw[key], kind, f"{where}.{key}")
    return raw[key]


# --------------------------------------------------------------------------- files

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_inside(root: Path, name: str) -> Path:
    """``root / name``, refusing absolute paths, ``..`` and symlinks that leave ``root``."""
    if not name or os.path.isabs(name) or Path(name).drive:
        raise BundleError(f"manifest path {name!r} is absolute or empty; bundle paths must be relative "
                          f"file names inside {root}")
    try:
        root_real = root.resolve()
        path = (root / name).resolve()
    except (ValueError, OSError, RuntimeError) as e:  # NUL bytes, names too long, symlink loops
        raise BundleError(f"manifest path {name!r} cannot be resolved inside {root} ({e}); "
                          f"{REBUILD_HINT.format(path=root)}") from None
    if root_real != path and root_real not in path.parents:
        raise BundleError(f"manifest path {name!r} leaves the bundle folder {root}; refusing to read it")
    return path


class Bundle:
    """A validated bundle folder. Opening checks the manifest, every file's presence and
    SHA-256 (``verify=True``), so a corrupt or tampered bundle fails here, not mid-run."""

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        hint = REBUILD_HINT.format(path=self.path)
        if not self.path.is_dir():
            raise BundleError(f"bundle folder {self.path} does not exist; build one with: "
                              f"python export/build_engines.py (demo) or --checkpoint CKPT --out {self.path}")
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path} is missing: {self.path} is not a complete bundle; {hint}")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise BundleError(f"{manifest_path} is not valid JSON ({type(e).__name__}: {e}); {hint}") from None
        except OSError as e:
            raise BundleError(f"{manifest_path} cannot be read ({e}); {hint}") from None
        try:
            self.manifest = Manifest.parse(raw)
        except BundleError as e:
            raise BundleError(f"{manifest_path}: {e}") from None
        files = [(g.file, g.sha256) for g in self.manifest.graphs.values()]
        files.append((self.manifest.constants_file, self.manifest.constants_sha256))
        for name, digest in files:
            path = resolve_inside(self.path, name)
            try:
                if not path.is_file():
                    raise BundleError(f"bundle file {path} is missing; {hint}")
                if verify and sha256_file(path) != digest:
                    raise BundleError(f"bundle file {path} does not match its SHA-256 in the manifest "
                                      f"(corrupt or modified); {hint}")
            except OSError as e:  # unreadable: permissions, I/O errors
                raise BundleError(f"bundle file {path} cannot be read ({e}); {hint}") from None

    def file(self, name: str) -> Path:
        return resolve_inside(self.path, name)

    def graph_path(self, key: str) -> Path:
        return self.file(self.manifest.graphs[key].file)

    def constants(self) -> dict[str, np.ndarray]:
        """``latent_avg`` [M, D] and ``average_image`` [3, R, R], float32 (no pickles loaded)."""
        path = self.file(self.manifest.constants_file)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.ascontiguousarray(npz[k], dtype=np.float32) for k in npz.files}
        except Exception as e:  # zip/npy format errors come in many types
            raise BundleError(f"{path} is not a readable .npz ({e}); {REBUILD_HINT.format(path=self.path)}") from None
        m = self.manifest
        expected = {"latent_avg": (m.latent_count, m.latent_dim), "average_image": (3, m.output_size, m.output_size)}
        for key, shape in expected.items():
            if key not in arrays or arrays[key].shape != shape:
                got = arrays[key].shape if key in arrays else "nothing"
                raise BundleError(f"{path}: {key} should have shape {shape}, found {got}")
        return arrays


# --------------------------------------------------------------------------- writing

class BundleWriter:
    """Writes a bundle into a temporary sibling folder and swaps it into place on commit.

    Use as a context manager: an exception (or Ctrl-C) inside the block removes the
    temporary folder and leaves any previous bundle at ``target`` untouched. The manifest is
    written last, so a folder without one is never a bundle.

    Crash safety (SIGKILL, power loss): the temporary folder ``.NAME.tmp-XXXX`` is paired with a
    lock file ``.NAME.tmp-XXXX.lock`` that this writer holds (``flock``) while it lives. A later
    writer for the same target removes the temporary folders whose lock nobody holds (left by a
    killed build) and leaves those of builds still running alone. On Linux the commit swaps the
    new folder with the old one in one ``renameat2(RENAME_EXCHANGE)``, so ``target`` is never
    missing; elsewhere it takes two renames, and a crash between them (the old bundle left as
    ``.NAME.old``) is repaired by the next writer.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._recover_interrupted_swap()
        self._remove_stale_temporaries()
        self._lock_fd, self.tmp = _locked_temporary(self.target)
        self.files: dict[str, str] = {}

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._lock_fd is None:
            return
        try:
            if exc_type is not None or os.path.lexists(self.tmp):
                _remove(self.tmp)
        finally:  # the lock file goes last: while it is held, nobody else removes the folder
            _unlink(_lock_path(self.tmp))
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, name: str) -> Path:
        """Where to write the bundle file ``name`` (a plain file name) before committing."""
        return resolve_inside(self.tmp, name)

    def add(self, name: str) -> str:
        """Record a written file; returns its SHA-256 for the manifest."""
        digest = sha256_file(self.path(name))
        self.files[name] = digest
        return digest

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        Manifest.parse(json.loads(json.dumps(manifest)))  # never commit what the reader rejects
        for name in self.files:  # the data reaches the disk before the manifest that vouches for it
            _fsync(self.path(name))
        with open(self.tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        _fsync(self.tmp)
        if not os.path.lexists(self.target):
            os.replace(self.tmp, self.target)
        elif _exchange(self.tmp, self.target):  # atomic: the old bundle is now at self.tmp
            _remove(self.tmp)
        else:
            old = self.target.parent / f".{self.target.name}.old"
            _remove(old)
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            _remove(old)
        _fsync(self.target.parent)
        log.info("bundle written to %s", self.target)
        return self.target

    def _recover_interrupted_swap(self) -> None:
        # A crash between the two renames of commit() leaves the previous bundle as ".NAME.old".
        old = self.target.parent / f".{self.target.name}.old"
        if old.exists() and not os.path.lexists(self.target):
            os.replace(old, self.target)
            log.warning("restored %s from an interrupted build", self.target)

    def _remove_stale_temporaries(self) -> None:
        """Remove ``.NAME.tmp-*`` folders (and lock files) of writers that died, never those of
        writers still running: a live writer holds its lock file's ``flock``."""
        if fcntl is None:
            return
        prefix = f".{self.target.name}.tmp-"
        for entry in self.target.parent.iterdir():
            if not entry.name.startswith(prefix) or entry.name.endswith(".lock"):
                continue
            lock = _lock_path(entry)
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:  # a writer creates its lock before its folder: none is alive
                fd = None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a build in progress
                os.close(fd)
                continue
            log.warning("removing %s, left by an interrupted build", entry)
            _remove(entry)
            _unlink(lock)
            if fd is not None:
                os.close(fd)
        for lock in self.target.parent.glob(f"{prefix}*.lock"):  # locks whose folder is already gone
            if not os.path.lexists(lock.with_name(lock.name[:-len(".lock")])):
                try:
                    fd = os.open(lock, os.O_RDWR)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        _unlink(lock)
                    finally:
                        os.close(fd)
                except OSError:
                    pass


try:
    import fcntl
except ImportError:  # Windows: no stale-folder cleanup
    fcntl = None


def _lock_path(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".lock")


def _locked_temporary(target: Path) -> tuple[int, Path]:
    """Create and lock ``.NAME.tmp-XXXX.lock``, then create the folder ``.NAME.tmp-XXXX``."""
    while True:
        fd, lock = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=".lock", dir=target.parent)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # another writer's cleanup may have taken the lock file before we locked it
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        tmp = Path(lock[:-len(".lock")])
        try:
            os.mkdir(tmp, 0o755)
            return fd, tmp
        except FileExistsError:  # a folder of that name left by an older writer: try another name
            _unlink(Path(lock))
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):  # not on this filesystem/kernel
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE) failed: {os.strerror(err)}")


def _remove(path: Path) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        _unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk (best effort: some filesystems refuse folder fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def iter_stage_graphs(manifest: Manifest) -> Iterator[GraphSpec]:
    """The distinct encoder graphs of the schedule, in first-use order."""
    seen = set()
    for st in manifest.schedule.stages:
        if st.graph not in seen:
            seen.add(st.graph)
            yield manifest.graphs[st.graph]
