"""The fake CUDA runtime's streams and events (a mixin of ``fake_cuda.FakeCudart``): queues that
run their work only when waited for. See ``fake_cuda``'s docstring for the rules."""

from __future__ import annotations


class QueuedStreams:
    """Per-stream work queues, queue positions, and events that mark them."""

    def enqueue(self, stream: int, kind, what: str, run) -> None:
        """Queue ``run`` on ``stream`` (it runs when the stream is waited for), or record it as a
        node while ``stream`` is capturing."""
        capture = self.capturing.get(int(stream))
        if capture is None:
            stream = int(stream)
            self.queues.setdefault(stream, []).append(run)
            self.queued[stream] = self.queued.get(stream, 0) + 1
        else:
            from .fake_cuda import Node

            capture["nodes"].append(Node(kind, what, run))

    def run_until(self, stream: int, position: int | None = None) -> None:
        """Run ``stream``'s queued work up to queue ``position`` (all of it by default)."""
        stream = int(stream)
        target = self.queued.get(stream, 0) if position is None else position
        queue = self.queues.get(stream, [])
        while self.completed.get(stream, 0) < target and queue:
            work = queue.pop(0)
            self.completed[stream] = self.completed.get(stream, 0) + 1
            work()

    def run_all(self) -> None:
        """The device drains (a device-wide synchronisation)."""
        while any(self.queues.values()):
            for stream in list(self.queues):
                self.run_until(stream)

    def cudaDeviceSynchronize(self):
        err = self._call("cudaDeviceSynchronize") or self._unsafe_during_capture()
        if err:
            return (err,)
        self.run_all()
        return (self.cudaError_t.cudaSuccess,)

    # ------------------------------------------------------------------ events
    def _known_stream(self, stream) -> bool:
        return int(stream) in self.streams or int(stream) in (self.LEGACY_STREAM, self.PER_THREAD_STREAM)

    def cudaEventCreateWithFlags(self, flags):
        self._call("cudaEventCreateWithFlags", flags)
        self._next_stream += 16
        self.events[self._next_stream] = None
        return (self.cudaError_t.cudaSuccess, self._next_stream)

    def cudaEventRecord(self, event, stream):
        self._call("cudaEventRecord", int(event), int(stream))
        ok = int(event) in self.events and self._known_stream(stream)
        if ok:  # the event completes when the stream's work queued so far has run
            self.events[int(event)] = (int(stream), self.queued.get(int(stream), 0))
        return (self.cudaError_t.cudaSuccess if ok else self.cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        self._call("cudaStreamWaitEvent", int(stream), int(event), flags)
        ok = int(event) in self.events and self._known_stream(stream)
        if ok and self.events[int(event)] is not None:  # an unrecorded event: nothing to wait for
            other, position = self.events[int(event)]
            self.enqueue(
                int(stream),
                self.cudaGraphNodeType.cudaGraphNodeTypeKernel,
                "wait event",
                lambda: self.run_until(other, position),
            )
        return (self.cudaError_t.cudaSuccess if ok else self.cudaError_t.cudaErrorInvalidValue,)

    def cudaEventDestroy(self, event):
        self._call("cudaEventDestroy", int(event))
        self.events.pop(int(event), None)
        return (self.cudaError_t.cudaSuccess,)
