"""A batching queue in front of a predictor: phrases that wait at the same time share one forward pass.

Request handlers :meth:`Batcher.submit` their (image, phrase, threshold, presence threshold) items and wait on the
futures they get back; one worker thread takes up to ``max_batch`` waiting items at a time, runs
the predictor's ``predict_many`` once on them and resolves their futures. It never waits for a
batch to fill: under load, the items that arrive while a batch runs form the next one, so a lone
request pays no extra latency.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from remamber.inference.processing import Prediction

PredictMany = Callable[[list[Image.Image], list[str], list[float], list[float]], list[Prediction]]


class QueueFull(Exception):
    """The queue has no room for the items of a request; the client should retry later."""


class BatcherClosed(Exception):
    """The server is shutting down and takes no new items."""


@dataclass
class _Item:
    image: Image.Image
    text: str
    threshold: float
    presence_threshold: float
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread that runs ``predict_many`` on up to ``max_batch`` waiting items at a time."""

    def __init__(self, predict_many: PredictMany, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.predict_many = predict_many
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.forward_calls = 0  # batches run, for /health and the tests
        self._waiting: deque[_Item] = deque()
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="remamber-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting for the model (not counting the batch that runs now)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Items in the batch that runs now."""
        return self._running

    def submit(self, jobs: Sequence[tuple[Image.Image, str, float, float]]) -> list[Future]:
        """Queue all items of one request, or none: :class:`QueueFull` when they do not all fit.
        An item is (image, phrase, threshold, presence threshold)."""
        items = [_Item(*job) for job in jobs]
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if len(self._waiting) + len(items) > self.max_queue:
                raise QueueFull(f"the queue is full ({len(self._waiting)} of {self.max_queue} items waiting)")
            self._waiting.extend(items)
            self._cond.notify()
        return [item.future for item in items]

    def close(self, timeout: float | None = None) -> None:
        """Take no new items, finish the queued ones, and stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if not self._waiting:
                return None  # closed and drained
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            self._running = len(batch)
        return batch

    def _run(self, batch: list[_Item]) -> None:
        preds = self.predict_many(
            [item.image for item in batch],
            [item.text for item in batch],
            [item.threshold for item in batch],
            [item.presence_threshold for item in batch],
        )
        self.forward_calls += 1
        for item, pred in zip(batch, preds, strict=True):
            item.future.set_result(pred)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            try:
                if batch:
                    self._run(batch)
            except Exception:  # noqa: BLE001 - one bad item must not fail the others: run each alone
                for item in batch:
                    if item.future.done():  # answered before the batch failed
                        continue
                    try:
                        self._run([item])
                    except Exception as e:  # noqa: BLE001 - reported to that item's request
                        item.future.set_exception(e)
            finally:
                with self._cond:
                    self._running = 0
