"""Peers on a CPU: what a user would run instead of the SDK, side by side with it, in one process.

    python benchmarks/run.py --peers --models demo,reference-256 --batches 1,8 -n 5 --rounds 5

Back ends (:data:`PEERS`), each running the whole N-step loop of one checkpoint:

* ``pytorch_eager``: the public loop in PyTorch eager (the harness's ``pytorch_public``);
* ``torch_compile``, ``torch_compile_bf16``: the same modules through ``torch.compile`` (Inductor),
  in FP32 and under ``torch.autocast("cpu", torch.bfloat16)`` (skipped with the reason on a CPU
  without BF16 instructions, where oneDNN emulates it);
* ``onnxruntime_portable``: ONNX Runtime on the bundle's portable graphs, default session options,
  ``session.run`` in a numpy loop: no CPU rewrites, no IOBinding;
* ``openvino_default``: ``core.compile_model(graph, "CPU")`` with no settings, reshaped to the
  batch, ``compiled(inputs)`` in a numpy loop, as OpenVINO's documentation shows it (BF16 on
  AMX hosts by default); ``openvino_fp32``: the same with FP32 and the LATENCY hint;
* ``sdk_onnxruntime``, ``sdk_openvino``: ``sdk.Translator`` on those back ends (OpenVINO at its
  gated precision); ``sdk_auto``: ``backend="auto"``, our best path on this machine.

Reported per machine: the CPU model and ISA flags, the FP32 and BF16 matmul peaks measured in
the same run (before and after the back ends), and per model and batch: each back end's median
and minimum seconds per frame (rounds interleaved), its speed-up over eager and over the best
peer, its fraction of both peaks (dense loop FLOPs / time), its effective precision and its
image PSNR against the FP32 loop at every step (torch peers: the last step against eager).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.harness.backends import BackendUnavailable, EagerLoop
from sdk import Bundle, SdkError, Translator

log = logging.getLogger(__name__)

PEERS = (
    "pytorch_eager",
    "torch_compile",
    "torch_compile_bf16",
    "onnxruntime_portable",
    "openvino_default",
    "openvino_fp32",
    "sdk_onnxruntime",
    "sdk_openvino",
    "sdk_auto",
)
OURS = ("sdk_onnxruntime", "sdk_openvino", "sdk_auto")
ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8", "avx_vnni")


def cpu_info() -> dict:
    """The CPU model and the ISA flags that decide the kernels (x86; Arm lists its features)."""
    from sdk.backends.onnxruntime.cpu import CPUINFO, cpu_flags

    model = ""
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            lines = f.read().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
        flags = cpu_flags(lines)
    except OSError:
        flags = frozenset()
    return {"model": model, "isa": [f for f in ISA if f in flags], "bf16_hardware": bool(flags & _BF16_FLAGS)}


_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def matmul_peaks(threads: int, n: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of an n x n x n matmul in PyTorch (oneDNN/MKL): float32, and bfloat16 (AMX or
    AVX512-BF16 where present; elsewhere emulated, at n / 4: minutes at n = 2048, and only
    reported, never a denominator). Medians of ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not cpu_info()["bf16_hardware"]:
            n = max(64, n // 4)
        a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        out[name] = 2.0 * n**3 / float(np.median(times)) / 1e9
    return out


# --------------------------------------------------------------------------- graph-based peers


class GraphLoop:
    """The loop over a bundle's portable graphs in numpy, one callable per (graph, batch):
    ``make(path, spec, batch) -> feeds -> output array``. The manifest drives the schedule."""

    def __init__(self, name: str, bundle: Path, make: Callable):
        self.name, self.bundle = name, Bundle(bundle)
        self._make, self._calls = make, {}
        consts = self.bundle.constants()
        self.z0, self.y0 = consts["latent_avg"], consts["average_image"]
        self.precision = "fp32"

    def _call(self, key: str, batch: int):
        if (key, batch) not in self._calls:
            spec = self.bundle.manifest.graphs[key]
            self._calls[(key, batch)] = self._make(self.bundle.graph_path(key), spec, batch, self)
        return self._calls[(key, batch)]

    def steps(self, x: np.ndarray, n: int) -> list[np.ndarray]:
        m, b = self.bundle.manifest, x.shape[0]
        z, y = np.repeat(self.z0[None], b, axis=0), np.repeat(self.y0[None], b, axis=0)
        images = []
        for t in range(n):
            key = m.schedule.stage(t).graph
            by_role = {"condition": x, "image": y, "latents": z}
            z = self._call(key, b)({s.name: by_role[s.role] for s in m.graphs[key].inputs})
            y = self._call("generator", b)({m.graphs["generator"].inputs[0].name: z})
            images.append(y)
        return images

    def run(self, x: np.ndarray, n: int) -> np.ndarray:
        return self.steps(x, n)[-1]

    def close(self) -> None:
        self._calls.clear()


def _ort_portable(path: Path, spec, batch: int, loop: GraphLoop, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def _openvino(path: Path, spec, batch: int, loop: GraphLoop, config: dict):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({t.name: list(t.concrete_shape(batch)) for t in spec.inputs})
    compiled = core.compile_model(model, "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: what the CPU plugin runs
    loop.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return lambda feeds: compiled(feeds)[0]


# --------------------------------------------------------------------------- torch peers


class CompiledLoop(EagerLoop):
    """The public loop with its encoders and generator through ``torch.compile`` (Inductor)."""

    def __init__(self, ckpt, bf16: bool):
        import torch

        self._generator = ckpt.generator.eval()  # eager while the base class renders the average image
        super().__init__(ckpt)
        self.name = "torch_compile_bf16" if bf16 else "torch_compile"
        self.stages = [dataclasses.replace(st, encoder=torch.compile(st.encoder)) for st in self.stages]
        self._generator = torch.compile(self.generator)
        self.bf16, self.precision = bf16, "bf16 autocast" if bf16 else "fp32"

    def _generate(self, z):
        self.generator.set_fused(True)
        try:
            return self._generator(z).float()
        finally:
            self.generator.set_fused(False)

    def run(self, x: np.ndarray, iterations: int) -> np.ndarray:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return super().run(x, iterations)


class SdkLoop:
    """``sdk.Translator`` on one back end; ``steps`` from ``return_steps``."""

    def __init__(self, name: str, bundle: Path, threads: int):
        backend = {"sdk_onnxruntime": "onnxruntime", "sdk_openvino": "openvino", "sdk_auto": "auto"}[name]
        self.name = name
        try:
            self.translator = Translator(bundle, backend=backend, threads=threads)
        except SdkError as e:
            raise BackendUnavailable(f"{name}: {e}") from None
        b = self.translator.backend
        self.precision = f"{b.name} {getattr(b, 'precision', 'fp32')}"

    def steps(self, x: np.ndarray, n: int) -> list[np.ndarray]:
        return [s.image for s in self.translator.infer(x, iterations=n, return_steps=True).steps or []]

    def run(self, x: np.ndarray, n: int) -> np.ndarray:
        return self.translator.infer(x, iterations=n).images

    def close(self) -> None:
        self.translator.close()


def make_peer(name: str, ckpt, bundle: Path, threads: int, bf16_hardware: bool):
    """The peer ``name`` (raises BackendUnavailable with the reason where it cannot run)."""
    if name == "pytorch_eager":
        loop = EagerLoop(ckpt)
        loop.precision = "fp32"  # type: ignore[attr-defined]
        return loop
    if name in ("torch_compile", "torch_compile_bf16"):
        if name.endswith("bf16") and not bf16_hardware:
            raise BackendUnavailable(f"{name}: no AVX512-BF16/AMX on this CPU (oneDNN would emulate bf16)")
        return CompiledLoop(ckpt, bf16=name.endswith("bf16"))
    if name == "onnxruntime_portable":
        return GraphLoop(name, bundle, lambda p, s, b, lp: _ort_portable(p, s, b, lp, threads))
    if name.startswith("openvino_"):
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise BackendUnavailable(f"{name}: OpenVINO is not installed (pip install '.[openvino]')") from None
        config = (
            {} if name == "openvino_default" else {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        )
        return GraphLoop(name, bundle, lambda p, s, b, lp: _openvino(p, s, b, lp, config))
    if name in OURS:
        return SdkLoop(name, bundle, threads)
    raise BackendUnavailable(f"unknown peer {name!r}; expected one of {PEERS}")
