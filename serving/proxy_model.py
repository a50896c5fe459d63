"""The ``model.py`` Triton's Python backend loads for a PyTriton model: PyTriton's own proxy,
with the errors it answers made fit for a client.

Not imported by the launcher: :func:`serving.pytriton_server._answer_errors_briefly` ships
this file into the model's repository entry as ``model.py`` and PyTriton's proxy beside it
as ``pytriton_model.py`` (the backend imports ``<version>.model``, so the relative import
below finds it). It runs inside Triton's Python backend stub, where only the standard
library and ``triton_python_backend_utils`` can be relied on.

PyTriton reports an exception of the inference function as a ``TritonModelException`` that
holds two formatted tracebacks (the function's, then the proxy's), and the backend answers it
with HTTP 500 / gRPC INTERNAL. Here the execution's requests are answered instead with one
line each: the exception's own last line. An error the launcher marks as the client's
(:data:`CLIENT_ERROR`, an ``sdk.InputError``) gets code ``INVALID_ARG``, which Triton sends as
HTTP 400 / gRPC INVALID_ARGUMENT; anything else stays an internal error (500), and its
traceback stays in the launcher's log. A request with an empty input tensor (a zero in its
shape), which PyTriton's transport cannot carry, is refused here on its own with
``INVALID_ARG``; the requests batched with it are still answered.
"""

import re

import triton_python_backend_utils as pb_utils  # type: ignore  # only inside Triton's Python backend

from .pytriton_model import TritonPythonModel as _PyTritonModel  # type: ignore  # shipped beside this file

CLIENT_ERROR = "ClientInputError"  # the class name serving.pytriton_server raises for the client's errors
_CLIENT_LINE = re.compile(r"^(?:[\w.]+\.)?" + CLIENT_ERROR + r": (.*)$")
MAX_MESSAGE = 1000  # characters a client is sent at most


def brief(error_text: str):
    """``(message, is_client_error)`` from PyTriton's formatted error text."""
    lines = [line.strip() for line in error_text.splitlines() if line.strip()]
    last = lines[-1] if lines else "the model failed without a message"
    match = _CLIENT_LINE.match(last)
    if match:
        return match.group(1)[:MAX_MESSAGE], True
    return f"internal error in the model: {last}"[:MAX_MESSAGE], False


def empty_input(request):
    """The refusal for a request with a zero-size input tensor (PyTriton cannot pass those on
    and fails with a TypeError), or None."""
    for tensor in request.inputs():
        shape = list(tensor.as_numpy().shape)
        if 0 in shape:
            return f"input {tensor.name()!r} is empty (shape {shape}); send at least one element per dimension"
    return None


def _error(message: str, client: bool):
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if client else "INTERNAL", None)
    # a Python backend without error codes takes the message alone (and answers 500)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


class TritonPythonModel(_PyTritonModel):
    def execute(self, requests):
        refused = {i: m for i, m in enumerate(map(empty_input, requests)) if m is not None}
        if not refused:
            return self._answer(requests)
        answers = iter(self._answer([r for i, r in enumerate(requests) if i not in refused]))
        return [_error(refused[i], True) if i in refused else next(answers) for i in range(len(requests))]

    def _answer(self, requests):
        if not requests:
            return []
        try:
            return super().execute(requests)
        except pb_utils.TritonModelException as e:
            message, client = brief(str(e))
            return [_error(message, client) for _ in requests]
