"""The bundle manifest: schema, parsing and consistency checks (no file access).

The manifest is the contract between ``export/build_engines.py`` (which writes it) and
:class:`sdk.Translator` (which reads it). It describes the graphs by their I/O *roles* and
the refinement loop as a *schedule* of stages, so a new model family is new manifest data,
not a new code path in the runtime.

Layout of ``manifest.json`` (schema version 1)::

    schema_version   1
    name, family     e.g. "demo", "restyle_fpn"
    task             {"name": "inversion" | "super_resolution", "options": {...}}
    input            {"channels": C_x, "size": S, "range": [lo, hi], "alignment": "ffhq" (optional)}
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
    chunks           {"bytes": K, "sha256": {file: [hex, ...]}}: the SHA-256 of every K-byte piece
                     of the files larger than K, checked in parallel when a bundle opens (optional)
    parity, build    what the export measured and with which tools (informational)

Every field the runtime reads is checked here, when a bundle opens, with a message naming it:
types, integer bounds (``MAX_*`` below: a JSON integer may have thousands of digits), finite
ranges, and the task's defaults (:func:`sdk.tasks.check_task_options`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BundleError
from .manifest_fields import bounded_int, expect, optional, required, shown, value_range
from .manifest_graphs import MAX_DIM, ORT_CPU_KEY, ROLES, GraphSpec, TensorSpec
from .tasks import check_task_options

SCHEMA_VERSION = 1
MAX_ITERATIONS = 1000  # bounds repeating schedules, so a typo cannot hang the caller's thread
# Bounds on the manifest's integers: far beyond any real model, low enough that the arithmetic and
# the messages on them stay cheap (JSON integers may have thousands of digits)
MAX_SIDE, MAX_CHANNELS, MAX_LATENTS, MAX_LATENT_DIM, MAX_BATCH = 16384, 4096, 4096, 65536, 65536
MAX_CHUNK_BYTES = 1 << 40
ENGINE_FIELDS = ("file", "sha256", "tensorrt", "compute_capability")  # strings; "gpu", "precision" optional
UNKNOWN_GPU = "unknown GPU"  # an engine entry without the build GPU's name


# --------------------------------------------------------------------------- schema (graphs: sdk/manifest_graphs.py)


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
class EngineSpec:
    """One ``engines`` entry: the TensorRT plan of graph ``key`` and what it was built for."""

    key: str
    file: str
    sha256: str
    tensorrt: str  # the TensorRT version that built it
    compute_capability: str  # of the build GPU, e.g. "8.9"
    gpu: str = UNKNOWN_GPU  # the build GPU's name
    precision: str = "fp32"
    batch_max: int | None = None  # the optimisation profile's largest batch (``profile.max``), None: not recorded

    @classmethod
    def parse(cls, key: str, raw: Any, graphs: Mapping[str, GraphSpec]) -> EngineSpec:
        where = f"engines.{key}"
        if not isinstance(raw, dict):
            raise BundleError(f"{where} is {type(raw).__name__}; expected an object")
        missing = [f for f in ENGINE_FIELDS if not isinstance(raw.get(f), str)]
        if missing:
            raise BundleError(f"{where} lacks the string field(s) {missing}; rebuild the engines")
        gpu, precision = optional(raw, "gpu", str, where, UNKNOWN_GPU), optional(raw, "precision", str, where, "fp32")
        profile = optional(raw, "profile", dict, where, {})
        batch_max = bounded_int(profile, "max", f"{where}.profile", 1, MAX_BATCH) if "max" in profile else None
        if key not in graphs:
            raise BundleError(
                f"{where} is an engine for no graph of manifest.graphs ({sorted(graphs)}); rebuild the engines"
            )
        return cls(
            key, raw["file"], raw["sha256"], raw["tensorrt"], raw["compute_capability"], gpu, precision, batch_max
        )


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: every field the runtime reads, checked. :meth:`info` gives the
    informational sections; :meth:`document` the JSON document itself, for writers."""

    _document: Mapping[str, Any] = field(repr=False, compare=False)
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
    output_range: tuple[float, float] = (-1.0, 1.0)
    chunk_bytes: int = 0
    chunk_sha256: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    engines: Mapping[str, EngineSpec] = field(default_factory=dict)  # graph key -> its TensorRT plan
    input_alignment: str | None = None  # how faces are aligned before the encoder ("ffhq"), None: no alignment

    @classmethod
    def parse(cls, raw: Any) -> Manifest:
        expect(raw, dict, "manifest")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise BundleError(
                f"manifest schema_version is {shown(version)}; this SDK reads version "
                f"{SCHEMA_VERSION}. Rebuild the bundle with this version's export/build_engines.py"
            )
        task = required(raw, "task", dict, "manifest")
        inp, out = required(raw, "input", dict, "manifest"), required(raw, "output", dict, "manifest")
        latent, batch = required(raw, "latent", dict, "manifest"), required(raw, "batch", dict, "manifest")
        graphs = {k: GraphSpec.parse(k, v) for k, v in required(raw, "graphs", dict, "manifest").items()}
        sched_raw = required(raw, "schedule", dict, "manifest")
        stages = []
        for i, s in enumerate(required(sched_raw, "stages", list, "schedule")):
            where = f"schedule.stages[{i}]"
            expect(s, dict, where)
            stages.append(
                Stage(
                    graph=required(s, "graph", str, where),
                    feedback=required(s, "feedback", bool, where),
                    residual=required(s, "residual", bool, where),
                )
            )
        if not stages:
            raise BundleError("schedule.stages is empty; expected at least one stage")
        schedule = Schedule(
            stages=tuple(stages),
            repeat_last=required(sched_raw, "repeat_last", bool, "schedule"),
            default_iterations=bounded_int(sched_raw, "default_iterations", "schedule", 0, MAX_ITERATIONS),
        )
        consts = required(raw, "constants", dict, "manifest")
        options = task.get("options", {}) or {}
        expect(options, dict, "task.options")
        if optional(out, "channels", int, "output", 3) != 3:
            raise BundleError(
                f"output.channels is {shown(out['channels'])}; the generator makes RGB images: expected 3"
            )
        m = cls(
            _document=raw,
            name=optional(raw, "name", str, "manifest", ""),
            family=required(raw, "family", str, "manifest"),
            task=required(task, "name", str, "task"),
            task_options=options,
            input_channels=bounded_int(inp, "channels", "input", 1, MAX_CHANNELS),
            input_size=bounded_int(inp, "size", "input", 1, MAX_SIDE),
            input_range=value_range(inp, "input"),
            input_alignment=optional(inp, "alignment", str, "input", None),
            output_size=bounded_int(out, "size", "output", 1, MAX_SIDE),
            output_range=value_range(out, "output") if "range" in out else (-1.0, 1.0),
            latent_count=bounded_int(latent, "count", "latent", 1, MAX_LATENTS),
            latent_dim=bounded_int(latent, "dim", "latent", 1, MAX_LATENT_DIM),
            batch_min=bounded_int(batch, "min", "batch", -MAX_BATCH, MAX_BATCH),
            batch_max=bounded_int(batch, "max", "batch", -MAX_BATCH, MAX_BATCH),
            graphs=graphs,
            schedule=schedule,
            constants_file=required(consts, "file", str, "constants"),
            constants_sha256=required(consts, "sha256", str, "constants"),
            engines=_parse_engines(raw.get("engines"), graphs),
            **_parse_chunks(raw),
        )
        m._check_consistency()
        _check_constant_shapes(consts)
        check_task_options(m.task, options, m.input_channels, m.input_size)
        return m

    def info(self, section: str) -> Mapping[str, Any]:
        """An informational section (``build``, ``parity``, ``accuracy``: what the export measured
        and with which tools), as written: not checked, not read by the runtime; {} when absent."""
        value = self._document.get(section)
        return value if isinstance(value, dict) else {}

    def document(self) -> dict[str, Any]:
        """A deep copy of the JSON document, for a writer that adds to it (the bundle's chunk
        digests) or a tool reading build details the runtime ignores (a graph's rewrites)."""
        return copy.deepcopy(dict(self._document))

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
                raise BundleError(
                    f"schedule.stages[{i}].feedback={st.feedback} but graphs.{st.graph} "
                    f"{'lacks' if st.feedback else 'has'} an 'image' input"
                )
            if st.residual and g.input("latents") is None:
                raise BundleError(f"schedule.stages[{i}] is residual but graphs.{st.graph} takes no latents")
        role_dims = {
            "condition": (self.input_channels, self.input_size, self.input_size),
            "image": (3, self.output_size, self.output_size),
            "latents": (self.latent_count, self.latent_dim),
            "sample": (self.latent_dim,),
            "style": (self.latent_dim,),
        }
        mapping = self.graphs.get("mapping")
        if mapping is not None and (mapping.input("sample") is None or mapping.output.role != "style"):
            raise BundleError("graphs.mapping must map role 'sample' to role 'style'")
        for g in self.graphs.values():
            for where, t in [(f"graphs.{g.key}.inputs[{i}]", t) for i, t in enumerate(g.inputs)] + [
                (f"graphs.{g.key}.outputs[0]", g.output)
            ]:
                b = t.shape[0] if t.shape else None
                batch_ok = isinstance(b, str) or b == self.batch_min == self.batch_max
                if not batch_ok or tuple(t.shape[1:]) != role_dims[t.role]:
                    raise BundleError(
                        f"{where}.shape is {list(t.shape)}; its role {t.role!r} needs "
                        f"[batch, {', '.join(map(str, role_dims[t.role]))}] (from the manifest's "
                        f"input/output/latent fields)"
                    )
        if not 1 <= self.schedule.default_iterations <= (self.schedule.max_iterations or MAX_ITERATIONS):
            raise BundleError(
                f"schedule.default_iterations={self.schedule.default_iterations} is outside "
                f"1..{self.schedule.max_iterations or MAX_ITERATIONS}"
            )
        if not 1 <= self.batch_min <= self.batch_max:
            raise BundleError(f"batch range {self.batch_min}..{self.batch_max} is empty")


def _parse_chunks(raw: Mapping) -> dict:
    chunks = raw.get("chunks")
    if chunks is None:
        return {}
    expect(chunks, dict, "chunks")
    size = required(chunks, "bytes", int, "chunks")
    if not 0 < size <= MAX_CHUNK_BYTES:
        raise BundleError(f"chunks.bytes is {shown(size)}; expected a positive piece size, at most {MAX_CHUNK_BYTES}")
    digests = required(chunks, "sha256", dict, "chunks")
    for name, pieces in digests.items():
        if not isinstance(pieces, list) or not pieces or not all(isinstance(d, str) and d for d in pieces):
            raise BundleError(f"chunks.sha256.{name} must be a non-empty list of hex digests; got {shown(pieces)}")
    return {"chunk_bytes": size, "chunk_sha256": {k: tuple(v) for k, v in digests.items()}}


def _check_constant_shapes(consts: Mapping) -> None:
    """``constants.arrays`` (optional, informational: the shapes read are the latent and output
    fields'): an object of shapes."""
    arrays = consts.get("arrays")
    if arrays is None:
        return
    expect(arrays, dict, "constants.arrays")
    for name, shape in arrays.items():
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM for d in shape
        ):
            raise BundleError(f"constants.arrays.{name} is {shown(shape)}; expected a shape (a list of positive ints)")


def _parse_engines(engines: Any, graphs: Mapping[str, GraphSpec]) -> dict[str, EngineSpec]:
    """``engines`` (TensorRT plans, optional): one object of string fields per graph."""
    if not engines:
        return {}
    if not isinstance(engines, dict):
        raise BundleError(f"manifest engines is {type(engines).__name__}; expected an object")
    return {key: EngineSpec.parse(key, entry, graphs) for key, entry in engines.items()}


def iter_stage_graphs(manifest: Manifest) -> Iterator[GraphSpec]:
    """The distinct encoder graphs of the schedule, in first-use order."""
    seen = set()
    for st in manifest.schedule.stages:
        if st.graph not in seen:
            seen.add(st.graph)
            yield manifest.graphs[st.graph]


# the whole schema is importable from here (the graph entries are defined in sdk/manifest_graphs.py)
__all__ = [
    "ENGINE_FIELDS",
    "MAX_ITERATIONS",
    "ORT_CPU_KEY",
    "ROLES",
    "SCHEMA_VERSION",
    "UNKNOWN_GPU",
    "EngineSpec",
    "GraphSpec",
    "Manifest",
    "Schedule",
    "Stage",
    "TensorSpec",
    "iter_stage_graphs",
]
