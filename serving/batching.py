"""The served model's contract and the batch executor behind it (numpy only, no Triton import).

Triton's dynamic batcher hands the model several requests at once; each may hold several rows
(its own batch dimension) and each row may ask for its own task options and iteration count.
:func:`translate_requests` answers each request right:

1. every row is pre-processed on its own (the task's pre-processing with that row's options,
   e.g. the super-resolution ``factor``), giving one ``[C, S, S]`` condition per row;
2. rows are grouped by iteration count (the only option the loop itself takes), and each group
   runs through ``Translator.infer`` stacked, in chunks of at most ``max_batch`` rows (padded up
   to the bundle's ``batch_min`` where a bundle only accepts fixed batches);
3. the results are scattered back to the requests in their original row order.

Names and types (config dims exclude Triton's batch dimension):

=============  ======  ===========  ======================================================
input          type    dims         meaning
=============  ======  ===========  ======================================================
image          UINT8   [-1,-1,-1]   HxWxC image (C 1, 3 or 4; a label map as HxWx1); the
                                    server runs the bundle's task pre-processing
condition      FP32    [C, S, S]    an already pre-processed input in the model's range
                                    (what ``Translator.infer`` takes); instead of ``image``
iterations     INT32   [1]          optional; the bundle's default when absent
<option>       INT32   [1]          optional; one per task option, e.g. ``factor``
=============  ======  ===========  ======================================================

Outputs: ``output`` UINT8 [R, R, 3] (what ``translator(image)`` returns), ``output_raw`` FP32
[3, R, R] (raw generator output, ``TranslationResult.images``) and ``latents`` FP32 [M, D]
(W+ codes); Triton sends only those a client asks for.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sdk import InputError, Translator
from sdk.imaging import to_uint8_image
from sdk.tasks import TASKS

IMAGE, CONDITION, ITERATIONS = "image", "condition", "iterations"
OUTPUT, OUTPUT_RAW, LATENTS = "output", "output_raw", "latents"


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: name, numpy dtype, dims without the batch dimension."""

    name: str
    dtype: type
    dims: tuple[int, ...]
    optional: bool = False


def task_options(task: str) -> tuple[str, ...]:
    """The keyword options of the task's pre-processing (``factor`` for super-resolution).
    Read from the function's signature so a new task option becomes a new input by itself."""
    fn = TASKS.get(task)
    if fn is None:
        return ()
    params = list(inspect.signature(fn).parameters)[2:]  # after (image, manifest)
    return tuple(params)


def model_inputs(translator: Translator) -> list[TensorInfo]:
    c, s, _ = translator.input_shape
    return [
        TensorInfo(IMAGE, np.uint8, (-1, -1, -1), optional=True),
        TensorInfo(CONDITION, np.float32, (c, s, s), optional=True),
        TensorInfo(ITERATIONS, np.int32, (1,), optional=True),
    ] + [TensorInfo(name, np.int32, (1,), optional=True) for name in task_options(translator.manifest.task)]


def model_outputs(translator: Translator) -> list[TensorInfo]:
    m, r = translator.manifest, translator.output_size
    return [
        TensorInfo(OUTPUT, np.uint8, (r, r, 3)),
        TensorInfo(OUTPUT_RAW, np.float32, (3, r, r)),
        TensorInfo(LATENTS, np.float32, (m.latent_count, m.latent_dim)),
    ]


@dataclass
class _Row:
    request: int
    condition: np.ndarray  # [C, S, S] float32
    iterations: int


def translate_requests(
    translator: Translator, requests: Sequence[Mapping[str, np.ndarray]], max_batch: int
) -> list[dict[str, np.ndarray]]:
    """Answer each request (a mapping of input name to batched array) with its outputs.

    Raises :class:`sdk.InputError` naming the request at fault. Triton's Python models answer
    a whole execution at once, so an error fails every request batched with the bad one."""
    rows: list[_Row] = []
    counts = []
    for index, request in enumerate(requests):
        try:
            found = _request_rows(translator, request, index)
        except InputError as e:
            raise InputError(f"request {index} of this batch: {e}") from None
        rows.extend(found)
        counts.append(len(found))
    results = _run_grouped(translator, rows, max_batch)
    answers, start = [], 0
    for n in counts:
        mine = results[start : start + n]
        start += n
        answers.append(
            {
                OUTPUT: np.stack([to_uint8_image(raw) for raw, _ in mine]),
                OUTPUT_RAW: np.stack([raw for raw, _ in mine]),
                LATENTS: np.stack([codes for _, codes in mine]),
            }
        )
    return answers


def _request_rows(translator: Translator, request: Mapping[str, np.ndarray], index: int) -> list[_Row]:
    given = [k for k in (IMAGE, CONDITION) if k in request]
    if len(given) != 1:
        raise InputError(
            f"send exactly one of the inputs {IMAGE!r} (HxWxC uint8) or {CONDITION!r} "
            f"(pre-processed float32); got {given or 'neither'}"
        )
    data = np.asarray(request[given[0]])
    n = data.shape[0]
    iterations = _per_row(request, ITERATIONS, n)
    options = {name: _per_row(request, name, n) for name in task_options(translator.manifest.task) if name in request}
    if given[0] == CONDITION and options:
        raise InputError(
            f"task options {sorted(options)} apply to {IMAGE!r} inputs (the server pre-processes "
            f"them); a {CONDITION!r} is already pre-processed"
        )
    default = translator.manifest.schedule.default_iterations
    rows = []
    for i in range(n):
        if given[0] == IMAGE:
            condition = translator.preprocess(data[i], **{k: v[i] for k, v in options.items()})
        else:
            condition = data[i]
        rows.append(_Row(index, condition, default if iterations is None else iterations[i]))
    return rows


def _per_row(request: Mapping[str, np.ndarray], name: str, n: int) -> list[int] | None:
    """An optional INT32 [batch, 1] input as one Python int per row."""
    if name not in request:
        return None
    values = np.asarray(request[name])
    if values.shape != (n, 1) or not np.issubdtype(values.dtype, np.integer):
        raise InputError(
            f"{name!r} must be an integer tensor [batch, 1] with one value per row ({n} rows); "
            f"got {values.dtype} {list(values.shape)}"
        )
    return [int(v) for v in values[:, 0]]


def _run_grouped(translator: Translator, rows: list[_Row], max_batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(raw image, latents)`` per row, in row order; rows of equal iterations run stacked."""
    groups: dict[int, list[int]] = defaultdict(list)
    for position, row in enumerate(rows):
        groups[row.iterations].append(position)
    out: list = [None] * len(rows)
    batch_min = translator.manifest.batch_min
    for iterations, positions in groups.items():
        for start in range(0, len(positions), max_batch):
            chunk = positions[start : start + max_batch]
            x = np.stack([rows[p].condition for p in chunk])
            if len(chunk) < batch_min:  # fixed-batch bundles: pad with copies of the last row, drop them after
                x = np.concatenate([x, np.repeat(x[-1:], batch_min - len(chunk), axis=0)])
            try:
                result = translator.infer(x, iterations=iterations)
            except InputError as e:
                culprits = sorted({rows[p].request for p in chunk})
                raise InputError(f"request(s) {culprits} of this batch: {e}") from None
            for k, p in enumerate(chunk):
                out[p] = (result.images[k], result.latents[k])
    return out
