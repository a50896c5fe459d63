"""GPU-resident inputs and outputs of ``Translator.infer``, without a GPU.

CUDA arrays of other libraries are stood in for by ``fakes.fake_arrays.FakeCudaTensor`` (fake
device memory behind ``__cuda_array_interface__`` or DLPack); the TensorRT backend runs on the
fake CUDA runtime. Checked here: which copies happen (device to device, none through the host),
stream ordering calls, the input checks and their messages, result ownership; and the DLPack
struct layout against a real consumer (numpy, on host memory). Not checked: anything on a GPU.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from fakes.fake_arrays import FakeCudaTensor
from helpers import tiny_bundle as tb
from helpers.tensorrt_bundles import add_engines, x_input
from sdk import InputError, Translator
from sdk.device_arrays import KDL_CPU, KDL_CUDA, DeviceArray, export_capsule, parse_capsule

H2D, D2H, D2D = "cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost", "cudaMemcpyDeviceToDevice"


@pytest.fixture
def trt_translator(fake_gpu, make_tiny_bundle):
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    with Translator(bundle, backend="tensorrt") as t:
        yield t


def copies(cudart) -> list[str]:
    return [c[1][3].name for c in cudart.calls if c[0] == "cudaMemcpyAsync"]


def test_cuda_array_input_is_copied_device_to_device(fake_gpu, trt_translator):
    _, cudart = fake_gpu
    x = x_input(seed=1)
    want = trt_translator.infer(x, iterations=2)
    cudart.calls.clear()
    got = trt_translator.infer(FakeCudaTensor(cudart, x), iterations=2)
    assert copies(cudart) == [D2D, D2H, D2H]  # no host upload
    np.testing.assert_array_equal(got.images, want.images)
    single = trt_translator.infer(FakeCudaTensor(cudart, x[0]), iterations=2)  # [C, S, S]: a batch of one
    np.testing.assert_array_equal(single.latents[0], trt_translator.infer(x[:1], iterations=2).latents[0])


def test_the_producers_stream_is_awaited_with_an_event_not_the_host(fake_gpu, trt_translator):
    _, cudart = fake_gpu
    producer = int(cudart.cudaStreamCreateWithFlags(1)[1])
    ours = trt_translator.backend.cuda.handle
    cudart.calls.clear()
    trt_translator.infer(FakeCudaTensor(cudart, x_input(), stream=producer), iterations=1)
    seq = [
        c
        for c in cudart.calls
        if c[0] in ("cudaEventRecord", "cudaStreamWaitEvent", "cudaMemcpyAsync", "cudaStreamSynchronize")
    ]
    start = [c[0] for c in seq].index("cudaEventRecord")
    record, wait, copy = seq[start : start + 3]  # no stream sync (host wait) between them
    assert record[1][1] == producer and wait[1][:2] == (ours, record[1][0])
    assert copy[0] == "cudaMemcpyAsync" and copy[1][3].name == D2D and copy[1][4] == ours
    cudart.calls.clear()
    trt_translator.infer(FakeCudaTensor(cudart, x_input(), stream=None), iterations=1)  # v3: None = ready
    assert "cudaStreamWaitEvent" not in cudart.names()


def test_dlpack_input_gets_our_stream(fake_gpu, trt_translator):
    _, cudart = fake_gpu
    x = x_input(seed=2)
    tensor = FakeCudaTensor(cudart, x, protocol="dlpack")
    got = trt_translator.infer(tensor, iterations=2)
    assert tensor.dlpack_streams == [trt_translator.backend.cuda.handle]
    np.testing.assert_array_equal(got.latents, trt_translator.infer(x, iterations=2).latents)


def test_an_unordered_read_of_pending_producer_work_is_stale(fake_gpu, trt_translator):
    """The stand-in's queued streams model the race: our copy on our non-blocking stream, not
    ordered after the producer's stream, reads the memory before the producer's kernel wrote it."""
    from sdk.device_arrays import DeviceInput

    _, cudart = fake_gpu
    x = x_input(seed=3)
    tensor = FakeCudaTensor(cudart, x, pending=True)  # written by work queued on the legacy stream
    rt = trt_translator.backend.cuda
    dst = rt.empty(x.shape, "float32")
    rt.copy_in(dst.ptr, dst.nbytes, DeviceInput(tensor.ptr, x.shape, 0, None, tensor))
    assert not rt.download(dst).any()  # zeros: the producer's write had not run
    cudart.cudaStreamSynchronize(cudart.LEGACY_STREAM)
    np.testing.assert_array_equal(tensor.numpy(), x)


@pytest.mark.parametrize("protocol,stream", [("cai_v2", None), ("torch", None), ("torch", "side")])
def test_pending_producer_work_is_ordered_before_our_copy(fake_gpu, trt_translator, protocol, stream):
    """PyTorch's CUDA Array Interface is v2 (no ``stream``): the legacy default stream is waited
    for with an event; where DLPack exists it is preferred, and the producer orders its stream
    (here a side stream, as under ``torch.cuda.stream(s)``) before ours."""
    _, cudart = fake_gpu
    x = x_input(seed=4)
    want = trt_translator.infer(x, iterations=2)
    producer = int(cudart.cudaStreamCreateWithFlags(1)[1]) if stream == "side" else None
    tensor = FakeCudaTensor(cudart, x, stream=producer, protocol=protocol, pending=True)
    cudart.calls.clear()
    got = trt_translator.infer(tensor, iterations=2)
    np.testing.assert_array_equal(got.latents, want.latents)
    np.testing.assert_array_equal(got.images, want.images)
    assert "cudaStreamSynchronize" not in [c[0] for c in cudart.calls[: cudart.names().index("cudaMemcpyAsync")]]
    ours = trt_translator.backend.cuda.handle
    assert tensor.dlpack_streams == ([ours] if protocol == "torch" else [])
    waits = [c for c in cudart.calls if c[0] == "cudaStreamWaitEvent"]
    assert waits and waits[0][1][0] == ours  # the GPU waits; the host does not


def test_device_output_is_an_owned_copy_on_the_gpu(fake_gpu, make_tiny_bundle):
    _, cudart = fake_gpu
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    x = x_input(seed=3)
    t = Translator(bundle, backend="tensorrt")
    want = t.infer(x, iterations=3)
    cudart.calls.clear()
    res = t.infer(FakeCudaTensor(cudart, x), iterations=3, output="device")
    assert copies(cudart) == [D2D, D2D, D2D]  # in, and the image and latents out: nothing via the host
    assert isinstance(res.images, DeviceArray) and res.images.shape == want.images.shape
    cai = res.images.__cuda_array_interface__
    assert cai["version"] == 3 and cai["typestr"] == "<f4" and cai["stream"] is None and cai["strides"] is None
    assert cudart.region(cudart.device_mem, cai["data"][0], res.images.nbytes)
    assert res.images.__dlpack_device__() == (KDL_CUDA, 0)
    capsule = res.images.__dlpack__(stream=7)  # kept: the struct lives as long as the capsule
    dl, data = parse_capsule(capsule)
    assert data == res.images.ptr and [dl.shape[i] for i in range(dl.ndim)] == list(want.images.shape)
    t.infer(x_input(seed=9), iterations=3)  # a later call does not touch the result
    t.close()
    np.testing.assert_array_equal(res.images.numpy(), want.images)  # valid after close, too
    np.testing.assert_array_equal(res.latents.numpy(), want.latents)
    held = len(cudart.device_mem)
    del res, dl, capsule
    gc.collect()
    assert len(cudart.device_mem) == held - 2  # freed with the last reference


def test_video_chain_stays_on_the_gpu(fake_gpu, trt_translator):
    _, cudart = fake_gpu
    frames = [x_input(seed=s) for s in (4, 5, 6)]
    host = None
    for x in frames:
        host = trt_translator.infer(x, iterations=2, init=host)
    prev = None
    for x in frames:
        cudart.calls.clear()
        prev = trt_translator.infer(FakeCudaTensor(cudart, x), iterations=2, init=prev, output="device")
    assert H2D not in copies(cudart) and D2H not in copies(cudart)
    np.testing.assert_array_equal(prev.latents.numpy(), host.latents)
    early = trt_translator.infer(
        FakeCudaTensor(cudart, frames[0]), iterations=3, init=prev, early_exit=1e-9, output="device"
    )
    assert early.iterations == 3 and len(early.latent_change) == 3  # reads the latents, returns on the GPU


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda c, x: FakeCudaTensor(c, x.astype(np.float64)), r"must be float32; got float64 .*tensor\.float\(\)"),
        (lambda c, x: FakeCudaTensor(c, x, strides=(4, 4 * tb.S * tb.S * tb.C_X, 4 * tb.S, 4)), "C-contiguous"),
        (lambda c, x: FakeCudaTensor(c, x, device=1), r"in cuda:1 but this Translator runs on cuda:0.*device=1"),
        (lambda c, x: FakeCudaTensor(c, x[:, :1]), r"expected x of shape"),
        (lambda c, x: FakeCudaTensor(c, x, stream=0), "stream 0, which the interface forbids"),
    ],
)
def test_device_input_checks(fake_gpu, trt_translator, make, message):
    _, cudart = fake_gpu
    cudart.devices = 2
    with pytest.raises(InputError, match=message):
        trt_translator.infer(make(cudart, x_input()), iterations=1)


def test_cpu_backends_refuse_device_arrays(fake_gpu, tiny_bundles):
    _, cudart = fake_gpu
    x = tb.random_input(1, seed=8)
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        with pytest.raises(InputError, match=r"need a GPU backend .* onnxruntime \(CPU\).*cpu\(\)\.numpy\(\)"):
            t.infer(FakeCudaTensor(cudart, x))
        with pytest.raises(InputError, match="need a GPU backend"):
            t.infer(x, output="device")
        with pytest.raises(InputError, match="output must be 'host'"):
            t.infer(x, output="gpu")
        prev = t.infer(x, iterations=1)
        with pytest.raises(InputError, match="need a GPU backend"):
            t.infer(x, init=(FakeCudaTensor(cudart, prev.latents), prev.images))


def test_dlpack_export_and_parse_against_numpy():
    """The ctypes DLPack structs, checked with a real consumer and producer: numpy, on host memory."""
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)

    class HostExport:  # what DeviceArray does, with the CPU device type numpy accepts
        def __dlpack_device__(self):
            return (KDL_CPU, 0)

        def __dlpack__(self, **_):
            return export_capsule(a.ctypes.data, a.shape, (KDL_CPU, 0), a)

    from sdk import device_arrays

    b = np.from_dlpack(HostExport())
    assert np.shares_memory(a, b) and np.array_equal(a, b) and len(device_arrays._EXPORTED) == 1
    del b
    gc.collect()
    assert not device_arrays._EXPORTED  # numpy called our deleter
    unused = export_capsule(a.ctypes.data, a.shape, (KDL_CPU, 0), a)
    del unused
    gc.collect()
    assert not device_arrays._EXPORTED  # an unconsumed capsule releases the tensor itself
    capsule = a[1].__dlpack__()
    t, data = parse_capsule(capsule)
    assert data == a[1].ctypes.data and [t.shape[i] for i in range(t.ndim)] == [3, 4]
    assert (t.device.device_type, t.dtype.code, t.dtype.bits) == (KDL_CPU, 2, 32)
