"""The manifest's graph entries: each ONNX graph of a bundle and its I/O contract by role.

``graphs.<key>`` = ``{"file", "sha256", "precision", "inputs": [io], "outputs": [io],
"onnxruntime_cpu": {...} (optional)}``, io = ``{"name", "role", "shape", "dtype"}``; the whole
layout is described in :mod:`sdk.manifest`, which parses these entries with the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BundleError
from .manifest_fields import expect, optional, required, shown

# sample: a random z [batch, D] into the mapping graph; style: one W code [batch, D] out of it
ROLES = ("condition", "image", "latents", "sample", "style")
# graphs.<key>.onnxruntime_cpu: the build machine's optimised graph (sdk/backends/onnxruntime/cpu.py)
ORT_CPU_KEY = "onnxruntime_cpu"
ORT_CPU_FIELDS = ("file", "sha256", "data", "data_sha256", "onnxruntime", "cpu")
MAX_DIM = (1 << 31) - 1  # any one tensor dimension


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name in the graph, its role in the loop, shape, dtype."""

    name: str
    role: str
    shape: tuple  # ints, or strings for symbolic dims ("batch")
    dtype: str

    @classmethod
    def parse(cls, raw: Any, where: str) -> TensorSpec:
        expect(raw, dict, where)
        spec = cls(
            name=required(raw, "name", str, where),
            role=required(raw, "role", str, where),
            shape=tuple(required(raw, "shape", list, where)),
            dtype=required(raw, "dtype", str, where),
        )
        if spec.role not in ROLES:
            raise BundleError(f"{where}.role is {spec.role!r}; expected one of {ROLES}")
        if spec.dtype not in ("float32", "float16"):
            raise BundleError(f"{where}.dtype is {spec.dtype!r}; expected float32 or float16")
        for d in spec.shape:
            if not (isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM)):
                raise BundleError(f"{where}.shape has {shown(d)}; expected positive ints (at most {MAX_DIM}) or names")
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
    # the graph as ONNX Runtime's CPU provider optimised it at build time (sdk/backends/onnxruntime/cpu.py)
    onnxruntime_cpu: Mapping[str, str] | None = None

    @classmethod
    def parse(cls, key: str, raw: Any) -> GraphSpec:
        where = f"graphs.{key}"
        expect(raw, dict, where)
        ins = tuple(
            TensorSpec.parse(r, f"{where}.inputs[{i}]") for i, r in enumerate(required(raw, "inputs", list, where))
        )
        outs = tuple(
            TensorSpec.parse(r, f"{where}.outputs[{i}]") for i, r in enumerate(required(raw, "outputs", list, where))
        )
        if len(outs) != 1:
            raise BundleError(f"{where} has {len(outs)} outputs; expected exactly one")
        roles = [t.role for t in ins]
        if len(set(roles)) != len(roles):
            raise BundleError(f"{where} binds a role twice: {roles}")
        cpu = raw.get(ORT_CPU_KEY)
        if cpu is not None and (
            not isinstance(cpu, dict) or not all(isinstance(cpu.get(k), str) and cpu[k] for k in ORT_CPU_FIELDS)
        ):
            raise BundleError(
                f"{where}.{ORT_CPU_KEY} must be an object with the string fields "
                f"{list(ORT_CPU_FIELDS)}; got {shown(cpu)}"
            )
        return cls(
            key=key,
            file=required(raw, "file", str, where),
            sha256=required(raw, "sha256", str, where),
            precision=optional(raw, "precision", str, where, "fp32"),
            inputs=ins,
            outputs=outs,
            onnxruntime_cpu=None if cpu is None else {k: cpu[k] for k in ORT_CPU_FIELDS},
        )

    def files(self) -> list[tuple[str, str]]:
        """(file, SHA-256) of every file this graph has in the bundle."""
        cpu = self.onnxruntime_cpu
        return [(self.file, self.sha256)] + (
            [(cpu["file"], cpu["sha256"]), (cpu["data"], cpu["data_sha256"])] if cpu else []
        )

    def input(self, role: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.role == role), None)

    def tensor(self, role: str) -> TensorSpec:
        """The input of ``role``, which the manifest's checks guarantee for the roles the loop
        reads (condition and latents of the stages, latents of the generator)."""
        spec = self.input(role)
        if spec is None:
            raise BundleError(f"graphs.{self.key} has no input of role {role!r}")
        return spec

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]
