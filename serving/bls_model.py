"""Triton Python-backend model (BLS) running the refinement loop over the bundle's engine models.

``python -m serving.model_repository`` copies this file to ``<repository>/<name>/1/model.py``
beside ``loop.json`` (the schedule: which model runs at each step, with which tensor names) and
``constants.npz`` (``latent_avg`` and ``average_image``, the loop's start state). It needs only
numpy and Triton's ``triton_python_backend_utils``, not this SDK.

One execution (Triton's dynamic batcher may hand several requests over at once):

* every request is checked on its own; a bad one gets an error response and the others go on;
* rows are grouped by iteration count and run stacked, up to ``max_batch_size`` rows per call;
* per step, ``z = E_t(x, y, z)`` then ``y = G(z)``, each a BLS call (``InferenceRequest.exec``)
  to the engine models. Tensors pass from one call to the next by DLPack, so on a GPU the codes
  and images stay in device memory; only the last step's outputs are asked for in CPU memory.

Inputs: ``condition`` FP32 [C, S, S] (pre-processed, as ``Translator.infer`` takes) and the
optional ``iterations`` INT32 [1]. Outputs: ``output`` UINT8 [R, R, 3], ``output_raw`` FP32
[3, R, R], ``latents`` FP32 [M, D] (the names the PyTriton server uses).
"""

import json
import os
from collections import defaultdict

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "loop.json"), encoding="utf-8") as f:
            self.loop = json.load(f)
        with np.load(os.path.join(folder, "constants.npz"), allow_pickle=False) as npz:
            self.latent_avg = np.ascontiguousarray(npz["latent_avg"], dtype=np.float32)
            self.average_image = np.ascontiguousarray(npz["average_image"], dtype=np.float32)
        config = json.loads(args["model_config"])
        self.max_batch = int(config["max_batch_size"])
        self.batch_min = int(self.loop["batch"]["min"])
        schedule = self.loop["schedule"]
        self.default_iterations = int(schedule["default_iterations"])
        self.max_iterations = int(schedule["max_iterations"])

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = defaultdict(list)  # iterations -> [(request index, row index, condition row)]
        sizes = {}
        for index, request in enumerate(requests):
            try:
                condition, iterations = self._read(request)
            except ValueError as e:  # this request alone is answered with the error
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
                continue
            sizes[index] = len(condition)
            for row, n in enumerate(iterations):
                groups[n].append((index, row, condition[row]))
        results = {}  # (request index, row index) -> (raw image, latents)
        for n, members in groups.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start : start + self.max_batch]
                images, latents = self._run(np.stack([c for _, _, c in chunk]), n)
                for k, (index, row, _) in enumerate(chunk):
                    results[index, row] = (images[k], latents[k])
        for index, size in sizes.items():
            raw = np.stack([results[index, row][0] for row in range(size)])
            codes = np.stack([results[index, row][1] for row in range(size)])
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("output", _to_uint8(raw)),
                    pb_utils.Tensor("output_raw", raw),
                    pb_utils.Tensor("latents", codes),
                ]
            )
        return responses

    def _read(self, request):
        """The request's condition rows [B, C, S, S] and one iteration count per row."""
        tensor = pb_utils.get_input_tensor_by_name(request, "condition")
        if tensor is None:
            raise ValueError("input 'condition' (FP32 [C, S, S], pre-processed) is required")
        condition = np.ascontiguousarray(tensor.as_numpy(), dtype=np.float32)
        if not np.all(np.isfinite(condition)):
            raise ValueError("'condition' contains NaN or Inf")
        given = pb_utils.get_input_tensor_by_name(request, "iterations")
        if given is None:
            return condition, [self.default_iterations] * len(condition)
        iterations = [int(v) for v in given.as_numpy().reshape(-1)]
        if len(iterations) != len(condition):
            raise ValueError(f"'iterations' has {len(iterations)} values for {len(condition)} rows")
        bad = [n for n in iterations if not 1 <= n <= self.max_iterations]
        if bad:
            raise ValueError(f"iterations must be in 1..{self.max_iterations}; got {bad}")
        return condition, iterations

    def _run(self, x, iterations):
        """The loop on a stacked chunk: raw images [B, 3, R, R] and latents [B, M, D] (numpy)."""
        rows = len(x)
        if rows < self.batch_min:  # fixed-batch engines: pad with copies of the last row
            x = np.concatenate([x, np.repeat(x[-1:], self.batch_min - rows, axis=0)])
        batch = len(x)
        state = {  # role -> pb_utils.Tensor (any name; renamed per call); fresh, writable arrays
            "condition": pb_utils.Tensor("condition", x),
            "latents": pb_utils.Tensor("latents", np.repeat(self.latent_avg[None], batch, axis=0)),
            "image": pb_utils.Tensor("image", np.repeat(self.average_image[None], batch, axis=0)),
        }
        stages, generator = self.loop["schedule"]["stages"], self.loop["generator"]
        for t in range(iterations):
            last = t == iterations - 1
            stage = stages[min(t, len(stages) - 1)]
            state["latents"] = _call(
                stage["model"],
                {name: state[role] for role, name in stage["inputs"].items()},
                stage["output"],
                on_cpu=last,
            )
            state["image"] = _call(
                generator["model"], {generator["input"]: state["latents"]}, generator["output"], on_cpu=last
            )
        return state["image"].as_numpy()[:rows], state["latents"].as_numpy()[:rows]


def _call(model, inputs, output, on_cpu):
    """One BLS call; ``inputs`` maps the model's input names to tensors, passed on by DLPack."""
    kwargs = {}
    if on_cpu:  # the response is read with numpy: ask for it in host memory
        kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
    request = pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=[output],
        inputs=[pb_utils.Tensor.from_dlpack(name, tensor.to_dlpack()) for name, tensor in inputs.items()],
        **kwargs,
    )
    response = request.exec()
    if response.has_error():
        raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
    return pb_utils.get_output_tensor_by_name(response, output)


def _to_uint8(raw):
    """[B, 3, R, R] in [-1, 1] -> [B, R, R, 3] uint8, as ``sdk.imaging.to_uint8_image``."""
    x = (np.clip(raw, -1.0, 1.0) + 1.0) / 2.0
    return np.round(x.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)
