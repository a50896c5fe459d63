"""The two ceilings every back end is compared with, measured on this machine in the same run.

* **practical peak**: a large float32 matmul (``N x N @ N x N``, N = 2048: 17.2 GFLOP), timed
  through numpy's BLAS and through ONNX Runtime's own ``MatMul`` (MLAS, the library behind
  its CPU convolutions), both with the benchmark's thread count. The higher median of the two
  is *the* matmul peak the efficiency figures divide by (the stricter choice).
* **arithmetic ceiling**: an FMA-bound loop: per thread, 12 independent chains of 8-wide
  ``vfmadd`` on registers (AVX2 + FMA), no memory traffic, compiled here with the system C
  compiler and loaded with ctypes. 12 chains cover the FMA latency (4 cycles) on two FMA
  ports; the figure is what the cores can issue, not what any real kernel reaches.

Both are noisy on a shared host; the harness measures them before and after the back ends and
reports medians (and maxima: the least disturbed samples).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MATMUL_N = 2048
CHAINS, LANES = 12, 8  # independent accumulators per thread, floats per AVX register

FMA_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <time.h>

typedef struct { long iters; float seed; float sink; } job_t;

static void *work(void *arg) {
    job_t *job = (job_t *)arg;
    /* distinct starting values known only at run time: identical chains would be merged into one
       by the compiler (common subexpressions), and constant ones folded */
    const __m256 seed = _mm256_set1_ps(job->seed), d = _mm256_set1_ps(1e-3f);
    __m256 a0 = seed, a1 = _mm256_add_ps(a0, d), a2 = _mm256_add_ps(a1, d), a3 = _mm256_add_ps(a2, d),
           a4 = _mm256_add_ps(a3, d), a5 = _mm256_add_ps(a4, d), a6 = _mm256_add_ps(a5, d),
           a7 = _mm256_add_ps(a6, d), a8 = _mm256_add_ps(a7, d), a9 = _mm256_add_ps(a8, d),
           a10 = _mm256_add_ps(a9, d), a11 = _mm256_add_ps(a10, d);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < job->iters; ++i) {  /* 12 independent FMA chains: bound by issue, not latency */
        a0 = _mm256_fmadd_ps(a0, m, c); a1 = _mm256_fmadd_ps(a1, m, c); a2 = _mm256_fmadd_ps(a2, m, c);
        a3 = _mm256_fmadd_ps(a3, m, c); a4 = _mm256_fmadd_ps(a4, m, c); a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c); a7 = _mm256_fmadd_ps(a7, m, c); a8 = _mm256_fmadd_ps(a8, m, c);
        a9 = _mm256_fmadd_ps(a9, m, c); a10 = _mm256_fmadd_ps(a10, m, c); a11 = _mm256_fmadd_ps(a11, m, c);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    job->sink = out[0];  /* keeps the loop from being optimised away */
    return 0;
}

/* Runs `threads` threads of `iters` iterations each from `seed` (pass 1.0); returns the wall seconds. */
double fma_loop(int threads, long iters, float seed) {
    pthread_t tid[256];
    job_t jobs[256];
    struct timespec t0, t1;
    if (threads < 1 || threads > 256) return -1.0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; ++i) {
        jobs[i].iters = iters;
        jobs[i].seed = seed;
        pthread_create(&tid[i], 0, work, &jobs[i]);
    }
    for (int i = 0; i < threads; ++i) pthread_join(tid[i], 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
}
"""


class CeilingError(RuntimeError):
    """A ceiling cannot be measured here (no C compiler, no AVX2/FMA)."""


@dataclass
class Ceiling:
    """GFLOP/s samples of one ceiling and their summary."""

    name: str
    samples_gflops: list
    median_gflops: float
    max_gflops: float

    @classmethod
    def of(cls, name: str, flops: float, seconds: list[float]) -> Ceiling:
        rates = [flops / s / 1e9 for s in seconds]
        return cls(name, [round(r, 2) for r in rates], float(np.median(rates)), float(max(rates)))

    def as_dict(self) -> dict:
        return asdict(self)


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: thread pools, page faults, packing buffers
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def numpy_matmul(repeats: int = 7, n: int = MATMUL_N) -> Ceiling:
    """``a @ b`` in float32 through numpy's BLAS (its own thread count: OPENBLAS_NUM_THREADS etc.)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    return Ceiling.of("matmul_numpy", 2.0 * n**3, _timed(lambda: a @ b, repeats))


def ort_matmul(threads: int, repeats: int = 7, n: int = MATMUL_N) -> Ceiling:
    """One ONNX ``MatMul`` node in ONNX Runtime (MLAS SGEMM) with ``threads`` intra-op threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ABC"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul", spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"A": rng.random((n, n), dtype=np.float32), "B": rng.random((n, n), dtype=np.float32)}
    return Ceiling.of("matmul_onnxruntime", 2.0 * n**3, _timed(lambda: session.run(None, feeds), repeats))


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _fma_library(cache: Path) -> ctypes.CDLL:
    if not {"avx2", "fma"} <= _cpu_flags():
        raise CeilingError("the FMA loop needs an x86 CPU with AVX2 and FMA (read from /proc/cpuinfo)")
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise CeilingError("no C compiler (cc / gcc / $CC) to build the FMA loop")
    digest = hashlib.sha256(FMA_SOURCE.encode()).hexdigest()[:12]
    lib = cache / f"fma_{digest}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        src = cache / f"fma_{digest}.c"
        src.write_text(FMA_SOURCE)
        cmd = [compiler, "-O2", "-mavx2", "-mfma", "-pthread", "-shared", "-fPIC", str(src), "-o", str(lib) + ".tmp"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise CeilingError(f"compiling the FMA loop failed: {' '.join(cmd)}\n{done.stderr.strip()}")
        os.replace(str(lib) + ".tmp", lib)
    dll = ctypes.CDLL(str(lib))
    dll.fma_loop.restype = ctypes.c_double
    dll.fma_loop.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_float]
    if _fma_count(lib) < CHAINS:  # a compiler that merged the chains would make the FLOP count a lie
        raise CeilingError(f"the compiled FMA loop has fewer than {CHAINS} FMA instructions ({lib})")
    return dll


def _fma_count(lib: Path) -> int:
    """FMA instructions in the library's code (objdump), or CHAINS when objdump is absent."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return CHAINS
    text = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True).stdout
    return sum("vfmadd" in line for line in text.splitlines())


def fma_loop(threads: int, cache: Path, repeats: int = 7, seconds: float = 0.2) -> Ceiling:
    """The FMA-bound loop on ``threads`` threads, each sample about ``seconds`` long."""
    dll = _fma_library(cache)
    per_iter = CHAINS * LANES * 2.0  # one FMA = 2 FLOPs per lane
    iters = 1_000_000
    while (elapsed := dll.fma_loop(threads, iters, 1.0)) < seconds / 4:  # size a sample from a short one
        iters *= 4
    iters = max(1, int(iters * seconds / max(elapsed, 1e-6)))
    times = [dll.fma_loop(threads, iters, 1.0) for _ in range(repeats)]
    return Ceiling.of("fma_loop", per_iter * iters * threads, times)


def measure_ceilings(threads: int, cache: Path, repeats: int = 7) -> dict:
    """Every ceiling this machine can measure; a ceiling that cannot be measured is reported with
    its reason instead of a number."""
    out: dict = {}
    for name, fn in (
        ("matmul_numpy", lambda: numpy_matmul(repeats)),
        ("matmul_onnxruntime", lambda: ort_matmul(threads, repeats)),
        ("fma_loop", lambda: fma_loop(threads, cache, repeats)),
    ):
        try:
            out[name] = fn().as_dict()
        except CeilingError as e:
            log.warning("ceiling %s not measured: %s", name, e)
            out[name] = {"name": name, "unavailable": str(e)}
    return out


def matmul_peak(ceilings: dict) -> float:
    """The matmul peak (GFLOP/s) of a :func:`measure_ceilings` result: the higher median."""
    medians = [c["median_gflops"] for k, c in ceilings.items() if k.startswith("matmul") and "median_gflops" in c]
    return max(medians) if medians else float("nan")
