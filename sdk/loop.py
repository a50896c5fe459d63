"""The refinement loop (OME Algorithm 1; ReStyle, E2Style and pSp are schedules of it).

    z_0 = latent_avg, y_0 = G(z_0)            (constants of the bundle)
    for t in 0..N-1:
        z_{t+1} = E_t(x, y_t, z_t)            (pooling, concat and residual add in the graph)
        y_{t+1} = G(z_{t+1})
        early exit: stop once mean |z_{t+1} - z_t| < threshold (OME Eq. 16, averaged)

A warm start replaces (z_0, y_0) by a previous result (video: the previous frame's latents and
image), so a stream that changes slowly needs fewer steps per frame.

Buffers live on the backend's device. Per batch size the loop allocates, once, the input,
two latent and two image buffers that ping-pong between steps, and the constant start state;
it binds every (graph, buffer arrangement) pair once. A call then uploads ``x``, runs two
engine calls per step, and downloads the last image and latents. Backend-agnostic: it only
uses :class:`sdk.backends.base.Backend` and the manifest's schedule.

GPU extras, where the backend offers them (``Backend.can_capture``, ``Backend.device_io``): with ``cuda_graphs`` the
2N engine calls of a call are recorded once per (batch, N, cold/warm start) into a CUDA graph and
replayed on later calls; the input upload and result download stay outside the graph, so one
graph serves host and device inputs and outputs. Calls that read the host between steps
(``return_steps``, ``early_exit``) run step by step, uncaptured. Device arrays in
(:class:`sdk.device_arrays.DeviceInput`) and out (``output="device"``) replace the upload and
download by device-to-device copies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Backend, Binding, Buffer, Replay, Runner
from .bundle import MAX_ITERATIONS, Bundle, GraphSpec, iter_stage_graphs
from .checks import check_bool, finite_float, is_int, shown
from .device_arrays import DeviceInput
from .errors import InputError

log = logging.getLogger(__name__)

INIT = "init"  # binding key: the step reads the constant start state
WARM = "warm"  # binding key: the step reads a caller-given start state (warm start)


@dataclass
class Step:
    """One iteration's result, on request (``return_steps=True``)."""

    latents: np.ndarray  # [B, M, D] float32
    image: np.ndarray  # [B, 3, R, R] float32, raw generator output


@dataclass
class LoopResult:
    images: np.ndarray  # [B, 3, R, R] float32, raw generator output (not clipped)
    latents: np.ndarray  # [B, M, D] float32
    iterations: int
    steps: list[Step] | None = None
    latent_change: list[float] | None = None  # per step, with early_exit: max over the batch of mean |dz|


Source = str | int  # what a step reads: INIT, WARM, or the ping-pong slot 0 or 1


@dataclass
class _Arena:
    """Device buffers and prepared bindings for one batch size."""

    x: Buffer
    z: list[Buffer]  # two ping-pong latent buffers
    y: list[Buffer]  # two ping-pong image buffers
    z0: Buffer
    y0: Buffer
    zw: Buffer  # warm-start state, uploaded per call that asks for it
    yw: Buffer
    encoder: dict[tuple[str, Source], Binding] = field(default_factory=dict)  # (graph, source) -> binding
    generator: dict[int, Binding] = field(default_factory=dict)  # slot -> binding
    # (N, INIT|WARM) -> the recorded steps, or None: not capturable
    graphs: dict[tuple[int, str], Replay | None] = field(default_factory=dict)


class RefinementLoop:
    """Runs a bundle's schedule on a backend. Thread-safe: calls are serialised by a lock,
    because the per-batch buffers are shared (use one loop per thread for parallelism)."""

    def __init__(self, backend: Backend, bundle: Bundle, cuda_graphs: bool = False, verify: bool = True):
        self.backend = backend
        self.cuda_graphs = bool(cuda_graphs) and backend.can_capture
        if cuda_graphs and not self.cuda_graphs:
            log.warning(
                "backend %s cannot record CUDA graphs (only the TensorRT backend can); the loop runs without them",
                backend.name,
            )
        self._bundle, self._verify = bundle, verify
        self.manifest = m = bundle.manifest
        specs = [*iter_stage_graphs(m), m.graphs["generator"]]
        if verify:  # one call, so the files hash in parallel
            bundle.verify([n for g in specs for n in backend.files(g)] + [m.constants_file])
        self.runners: dict[str, Runner] = {g.key: backend.load(g, bundle.graph_path(g.key)) for g in specs}
        consts = bundle.constants()
        if verify:  # the files the backend loaded are still the ones hashed (nobody replaced one meanwhile)
            bundle.check_unchanged()
        self._latent_avg, self._average_image = consts["latent_avg"], consts["average_image"]
        self._arenas: dict[int, _Arena] = {}
        self._mapping: dict[int, tuple] = {}  # batch -> (input, output, binding) of the mapping graph
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ public
    def run(
        self,
        x: np.ndarray | DeviceInput,
        iterations: int | None = None,
        return_steps: bool = False,
        init: tuple[np.ndarray | DeviceInput, np.ndarray | DeviceInput] | None = None,
        early_exit: float | None = None,
        output: str = "host",
    ) -> LoopResult:
        """``x``: [B, C_x, S, S] float32 in the model's input range (a host array, or a
        :class:`DeviceInput` on backends with ``device_io``). Returns the last step.

        ``init``: ``(latents [B, M, D], images [B, 3, R, R])`` float32 to start from instead of
        the average (warm start; iterative feedback bundles only). ``early_exit``: stop after the
        first step whose mean absolute latent change (max over the batch) is below it;
        ``iterations`` is then the cap. It reads the latents back after every step (a small copy;
        a host synchronisation on GPUs). ``output``: "host" (numpy arrays) or "device" (new
        :class:`sdk.device_arrays.DeviceArray` objects, ready when returned)."""
        m = self.manifest
        n = self.check_arguments(iterations, return_steps, early_exit, output)
        expected = (m.input_channels, m.input_size, m.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(
                f"input must be [B, {expected[0]}, {expected[1]}, {expected[2]}] (NCHW); got {list(x.shape)}"
            )
        batch = x.shape[0]
        self.check_batch(batch)
        if init is not None:
            self._check_init(init, batch)
        self.check_device_use(output, any(isinstance(v, DeviceInput) for v in [x, *(init or ())]))
        with self._lock:
            self._check_open()
            arena = self._arena(batch)
            self._put(arena.x, x)
            if init is not None:
                self._put(arena.zw, init[0])
                self._put(arena.yw, init[1])
            start = WARM if init is not None else INIT
            fetch = self.backend.fetch_device if output == "device" else self.backend.download
            if return_steps or early_exit:  # reads between steps: step by step, never from a graph
                previous = None
                if early_exit:
                    previous = (
                        self._latent_avg
                        if init is None
                        else (init[0] if isinstance(init[0], np.ndarray) else self.backend.download(arena.zw))
                    )
                t, steps, changes = self._run_stepwise(arena, int(n), start, fetch, return_steps, early_exit, previous)
            else:
                self._run_all(arena, int(n), start)
                t, steps, changes = int(n), None, None
            if steps:
                images, latents = steps[-1].image, steps[-1].latents
            else:
                images, latents = fetch(arena.y[(t - 1) % 2]), fetch(arena.z[(t - 1) % 2])
            if output == "device":  # ready for any consumer stream; borrowed device inputs are read
                self.backend.synchronize()
            return LoopResult(images, latents, t, steps, changes)

    def check_arguments(self, iterations=None, return_steps=False, early_exit=None, output="host") -> int:
        """The number of iterations a call runs, or :class:`InputError` for any bad scalar argument
        (cheap: callers check these before converting or copying their arrays)."""
        sched = self.manifest.schedule
        n = sched.default_iterations if iterations is None else iterations
        limit = sched.max_iterations or MAX_ITERATIONS
        if not is_int(n) or not 1 <= n <= limit:
            raise InputError(
                f"iterations must be an int in 1..{limit} for this {self.manifest.family} bundle; got {shown(n)}"
            )
        check_bool(return_steps, "return_steps")
        if early_exit is not None and not (finite_float(early_exit) or 0.0) > 0.0:
            raise InputError(
                f"early_exit must be a positive number (a mean latent change) or None; got {shown(early_exit)}"
            )
        _check_output(output)
        return int(n)

    def state_shapes(self, batch: int) -> tuple[tuple, tuple]:
        """The shapes of a loop state for ``batch``: (latents [B, M, D], images [B, 3, R, R])."""
        gen = self.manifest.graphs["generator"]
        return tuple(gen.tensor("latents").concrete_shape(batch)), tuple(gen.output.concrete_shape(batch))

    def _run_stepwise(
        self,
        arena: _Arena,
        n: int,
        start: str,
        fetch: Callable[[Buffer], Any],
        return_steps: bool,
        early_exit: float | None,
        previous: np.ndarray | None,
    ) -> tuple[int, list[Step] | None, list[float] | None]:
        steps: list[Step] | None = [] if return_steps else None
        changes: list[float] | None = [] if early_exit else None
        threshold = float(early_exit) if early_exit else 0.0
        t = 0
        while t < n:
            self._step(arena, t, start)
            t += 1
            z, y = arena.z[(t - 1) % 2], arena.y[(t - 1) % 2]
            if steps is not None:
                steps.append(Step(fetch(z), fetch(y)))
            if changes is not None:
                latest = steps[-1].latents if steps is not None else None
                current = latest if isinstance(latest, np.ndarray) else self.backend.download(z)
                change = float(np.abs(current - previous).mean(axis=(1, 2)).max())
                changes.append(change)
                previous = current
                if change < threshold:
                    break
        return t, steps, changes

    def _run_all(self, arena: _Arena, n: int, start: str) -> None:
        """All N steps with no host work in between: replayed from a CUDA graph where enabled."""
        if not self.cuda_graphs:
            return self._enqueue(arena, n, start)
        key = (n, start)
        if key not in arena.graphs:
            # capture() runs the steps once (this call's results), then records them
            arena.graphs[key] = self.backend.capture(lambda: self._enqueue(arena, n, start))
            return
        replay = arena.graphs[key]
        if replay is None:  # not capturable (warned once): eager
            self._enqueue(arena, n, start)
        else:
            replay.launch()

    def _enqueue(self, arena: _Arena, n: int, start: str) -> None:
        for t in range(n):
            self._step(arena, t, start)

    def _step(self, arena: _Arena, t: int, start: str) -> None:
        """Step ``t``: reads the start state (t = 0) or the slot step t-1 wrote; writes slot t % 2."""
        stage = self.manifest.schedule.stage(t)
        source = start if t == 0 else (t - 1) % 2
        self.runners[stage.graph].run(arena.encoder[(stage.graph, source)])
        self.runners["generator"].run(arena.generator[t % 2])

    def _put(self, dst: Buffer, value: np.ndarray | DeviceInput) -> None:
        if isinstance(value, DeviceInput):
            self.backend.put_device(dst, value)
        else:
            self.backend.upload(dst, value)

    def check_device_use(self, output: str, device_inputs: bool) -> None:
        """:class:`InputError` unless this backend can take the call's device inputs (if any) and
        give ``output``."""
        _check_output(output)
        if (output == "device" or device_inputs) and not self.backend.device_io:
            raise InputError(
                f"GPU-resident inputs and output='device' need a GPU backend (tensorrt, onnxruntime-cuda); "
                f"this Translator runs on {self.backend.name} (CPU): pass numpy arrays (e.g. "
                f"tensor.cpu().numpy()) and use output='host'"
            )

    def _check_init(self, init, batch: int) -> None:
        m, stage = self.manifest, self.manifest.schedule.stages[0]
        if not (self.manifest.schedule.repeat_last and stage.feedback and stage.residual):
            raise InputError(
                f"a warm start needs an iterative bundle whose steps take the previous image and "
                f"latents (ReStyle, OME); this {m.family} bundle's schedule starts without them"
            )
        expected = self.state_shapes(batch)
        if (
            not isinstance(init, tuple)
            or len(init) != 2
            or any(not isinstance(a, (np.ndarray, DeviceInput)) or tuple(a.shape) != e for a, e in zip(init, expected))
        ):
            got = (
                [list(a.shape) if isinstance(a, (np.ndarray, DeviceInput)) else type(a).__name__ for a in init]
                if isinstance(init, tuple)
                else type(init).__name__
            )
            raise InputError(
                f"init must be (latents {list(expected[0])}, images {list(expected[1])}) float32 arrays "
                f"for this batch (a previous result); got {got}"
            )

    def synthesise(self, latents: np.ndarray) -> np.ndarray:
        """G(latents): [B, M, D] float32 → [B, 3, R, R] raw generator images."""
        m = self.manifest
        expected = (m.latent_count, m.latent_dim)
        if latents.ndim != 3 or tuple(latents.shape[1:]) != expected:
            raise InputError(f"latents must be [B, {expected[0]}, {expected[1]}]; got {list(latents.shape)}")
        self.check_batch(latents.shape[0])
        with self._lock:
            self._check_open()
            arena = self._arena(latents.shape[0])
            self.backend.upload(arena.z[0], latents)
            self.runners["generator"].run(arena.generator[0])
            return self.backend.download(arena.y[0])

    def mapping_spec(self) -> GraphSpec:
        """The mapping graph's spec, or :class:`InputError` where the bundle has none."""
        spec = self.manifest.graphs.get("mapping")
        if spec is None:
            raise InputError(
                "this bundle has no mapping graph (built before style mixing existed); rebuild it "
                "with export/build_engines.py, or pass inject_latents"
            )
        return spec

    def map_samples(self, samples: np.ndarray) -> np.ndarray:
        """The mapping network: [B, D] standard-normal z → [B, D] W codes (buffers and binding
        made once per batch size, like the loop's arenas)."""
        spec = self.mapping_spec()
        if samples.ndim != 2 or samples.shape[1] != self.manifest.latent_dim:
            raise InputError(f"samples must be [B, {self.manifest.latent_dim}]; got {list(samples.shape)}")
        self.check_batch(samples.shape[0])
        with self._lock:
            self._check_open()
            if "mapping" not in self.runners:
                if self._verify:
                    self._bundle.verify(self.backend.files(spec))
                runner = self.backend.load(spec, self._bundle.graph_path("mapping"))
                if self._verify:
                    self._bundle.check_unchanged()
                self.runners["mapping"] = runner
            be, batch, runner = self.backend, samples.shape[0], self.runners["mapping"]
            if batch not in self._mapping:  # per batch, once (backends free buffers only at close)
                inp = be.empty(spec.inputs[0].concrete_shape(batch), spec.inputs[0].dtype)
                out = be.empty(spec.output.concrete_shape(batch), spec.output.dtype)
                self._mapping[batch] = (inp, out, runner.bind({spec.inputs[0].name: inp}, {spec.output.name: out}))
            inp, out, binding = self._mapping[batch]
            be.upload(inp, samples)
            runner.run(binding)
            return be.download(out)

    def check_batch(self, batch: int) -> None:
        m = self.manifest
        if not m.batch_min <= batch <= m.batch_max:
            raise InputError(
                f"batch size {batch} is outside this bundle's range {m.batch_min}..{m.batch_max}; "
                f"split the batch or rebuild with --max-batch"
            )

    def close(self) -> None:
        """Drop the buffers and sessions; later calls raise :class:`InputError`. A call already
        running finishes first (the lock)."""
        with self._lock:
            self._closed = True
            self._arenas.clear()
            self._mapping.clear()
            for runner in self.runners.values():
                runner.close()
            self.runners.clear()

    def _check_open(self) -> None:
        if self._closed:  # a thread raced a close(): fail clearly, not on a missing session
            raise InputError("this Translator is closed")

    # ------------------------------------------------------------------ setup
    def _arena(self, batch: int) -> _Arena:
        if batch in self._arenas:
            return self._arenas[batch]
        m, be = self.manifest, self.backend
        gen = m.graphs["generator"]
        zspec, yspec = gen.tensor("latents"), gen.output
        first = m.graphs[m.schedule.stages[0].graph]
        xspec = first.tensor("condition")
        arena = _Arena(
            x=be.empty(xspec.concrete_shape(batch), xspec.dtype),
            z=[be.empty(zspec.concrete_shape(batch), zspec.dtype) for _ in range(2)],
            y=[be.empty(yspec.concrete_shape(batch), yspec.dtype) for _ in range(2)],
            z0=be.empty(zspec.concrete_shape(batch), zspec.dtype),
            y0=be.empty(yspec.concrete_shape(batch), yspec.dtype),
            zw=be.empty(zspec.concrete_shape(batch), zspec.dtype),
            yw=be.empty(yspec.concrete_shape(batch), yspec.dtype),
        )
        be.upload(arena.z0, np.broadcast_to(self._latent_avg, zspec.concrete_shape(batch)))
        be.upload(arena.y0, np.broadcast_to(self._average_image, yspec.concrete_shape(batch)))
        for slot in (0, 1):
            arena.generator[slot] = self.runners["generator"].bind(
                {zspec.name: arena.z[slot]}, {yspec.name: arena.y[slot]}
            )
        # (source, latents read, image read, slot written): a step that reads slot s writes the
        # other slot; the first step writes slot 0
        reads: list[tuple[Source, Buffer, Buffer, int]] = [(INIT, arena.z0, arena.y0, 0), (WARM, arena.zw, arena.yw, 0)]
        reads += [(s, arena.z[s], arena.y[s], 1 - s) for s in (0, 1)]
        for graph in iter_stage_graphs(m):
            for source, z_in, y_in, out_slot in reads:
                arena.encoder[(graph.key, source)] = self.runners[graph.key].bind(
                    self._stage_inputs(graph, arena.x, y_in, z_in), {graph.output.name: arena.z[out_slot]}
                )
        self._arenas[batch] = arena
        return arena

    @staticmethod
    def _stage_inputs(graph: GraphSpec, x, y, z) -> dict:
        by_role = {"condition": x, "image": y, "latents": z}
        return {t.name: by_role[t.role] for t in graph.inputs}


def _check_output(output) -> None:
    if not isinstance(output, str) or output not in ("host", "device"):
        raise InputError(f"output must be 'host' (numpy arrays) or 'device' (GPU arrays); got {shown(output)}")
