"""GPUs on paper: a roofline estimate of every graph and of the loop, from the ONNX graphs.

No GPU is available to this project, so GPU speed is *estimated*, never measured: each node of
a graph takes ``max(FLOPs / (peak * e_compute), bytes / (bandwidth * e_memory))`` with the
FP16 tensor-core peak and the memory bandwidth from each GPU's data sheet, the FLOPs and bytes
of :mod:`benchmarks.harness.flops` (bytes halved: an FP16 engine stores every float tensor in
2 bytes), and stated efficiencies. Two bounds:

* **fused** (the optimistic one): what TensorRT does with these graphs: element-wise work
  (modulation, demodulation, noise, bias, activations) runs inside the convolutions'
  epilogues, so only the dense nodes move data (their input, weights and output, once);
* **unfused**: every node reads its inputs and writes its output through memory.

A frame of N iterations costs N x (encoder step + generator); CUDA graphs (the SDK records the
loop) make launch overheads negligible, and they are ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from benchmarks.harness.flops import DENSE, GraphCost

# Data-sheet figures: dense FP16 tensor-core TFLOPS (no sparsity) and memory bandwidth (GB/s).
GPUS = {
    "H100 SXM5": (
        989.4,
        3350.0,
        "NVIDIA H100 data sheet: FP16 Tensor Core 1979 TFLOPS with sparsity (989.4 dense), HBM3 3.35 TB/s",
    ),
    "A100 SXM4 80GB": (
        312.0,
        2039.0,
        "NVIDIA A100 data sheet: FP16 Tensor Core 312 TFLOPS dense (624 sparse), HBM2e 2039 GB/s",
    ),
    "RTX 4090": (
        165.2,
        1008.0,
        "Ada Lovelace (AD102) whitepaper: FP16 Tensor TFLOPS with FP32 accumulate 165.2 "
        "dense (330.3 with FP16 accumulate), GDDR6X 1008 GB/s",
    ),
    "Jetson AGX Orin 64GB": (
        42.5,
        204.8,
        "Jetson AGX Orin technical brief: GPU tensor cores 170 sparse INT8 TOPS = "
        "85 dense INT8 = 42.5 dense FP16 TFLOPS (HMMA at half the IMMA rate), "
        "LPDDR5 204.8 GB/s",
    ),
}
E_COMPUTE = 0.5  # fraction of the dense tensor-core peak a TensorRT convolution reaches (assumed)
E_MEMORY = 0.7  # fraction of the data-sheet bandwidth streaming kernels reach (assumed)
FP16_BYTES = 0.5  # the graphs are counted in float32; an FP16 engine moves half the bytes


@dataclass
class GraphEstimate:
    fused_ms: float
    unfused_ms: float
    compute_ms: float  # dense FLOPs at the assumed efficiency alone (the compute floor)

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_graph(
    cost: GraphCost, tflops: float, gbps: float, e_compute: float = E_COMPUTE, e_memory: float = E_MEMORY
) -> GraphEstimate:
    flops_rate, byte_rate = tflops * 1e12 * e_compute, gbps * 1e9 * e_memory
    fused = unfused = compute = 0.0
    for op, flops, act_bytes, w_bytes in cost.nodes:
        moved = (act_bytes + w_bytes) * FP16_BYTES
        t_compute = flops / flops_rate if op in DENSE else 0.0
        node = max(t_compute, moved / byte_rate)
        unfused += node
        if op in DENSE:
            fused += node
            compute += t_compute
    return GraphEstimate(1e3 * fused, 1e3 * unfused, 1e3 * compute)


def estimate_loop(
    costs: dict[str, GraphCost],
    stage_graphs: list[str],
    max_iterations: int = 5,
    e_compute: float = E_COMPUTE,
    e_memory: float = E_MEMORY,
) -> dict:
    """Per GPU: each graph's estimate and frames per second for N = 1..max_iterations."""
    out = {}
    for gpu, (tflops, gbps, source) in GPUS.items():
        graphs = {k: estimate_graph(c, tflops, gbps, e_compute, e_memory) for k, c in costs.items()}
        fps = {}
        for n in range(1, max_iterations + 1):
            keys = [stage_graphs[min(t, len(stage_graphs) - 1)] for t in range(n)] + ["generator"] * n
            fused = sum(graphs[k].fused_ms for k in keys)
            unfused = sum(graphs[k].unfused_ms for k in keys)
            fps[n] = {"fused_fps": 1e3 / fused, "unfused_fps": 1e3 / unfused}
        out[gpu] = {
            "fp16_tflops": tflops,
            "bandwidth_gbps": gbps,
            "source": source,
            "graphs": {k: v.as_dict() for k, v in graphs.items()},
            "fps": fps,
        }
    return {
        "assumptions": {
            "e_compute": e_compute,
            "e_memory": e_memory,
            "bytes": "FP16 (half the float32 count)",
            "launch_overhead": "ignored (CUDA graphs)",
        },
        "gpus": out,
    }
