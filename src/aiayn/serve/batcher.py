"""Dynamic batching: concurrent requests are decoded together.

Every request goes into one pending list. A single worker coroutine takes the oldest pending
request, gathers the later ones that can share its search (same beam, n-best, length penalty,
output cap and n-gram ban) up to `max_batch_tokens` (source subwords × beam, the unit of `Translator.max_tokens`)
and `max_batch_texts`, waiting at most `max_wait_ms` after the oldest one arrived for more to
come, and decodes them as one `Translator.translate` call in the model thread. While the model is
busy, new requests pile up and form the next batch, so batches grow with the load by themselves.

The model runs in one dedicated thread (never on the event loop, never two calls at once);
`run_exclusive` puts other model work (attention maps) on the same thread. Requests whose
caller has gone (timed out, disconnected) are dropped before they are decoded, and a batch whose
callers have all timed out stops decoding at its next step, so the model is free for the next
batch.
`close()` stops taking requests and finishes every pending one.

`CompletionBatcher` does the same for a language model: requests with equal generation options
are continued together by one `Generator.generate` call, each text streaming back to its caller.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, TypeVar

from aiayn import runtime
from aiayn.generate.search import SearchCancelled
from aiayn.generate.translate import SearchOptions, Translation, Translator

log = logging.getLogger("aiayn.serve")
T = TypeVar("T")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down (or was never started) and takes no new requests."""


class QueueFull(RuntimeError):
    """More requests are waiting than the batcher is allowed to hold."""


@dataclass(frozen=True)
class DecodeKey:
    """The search options of a request: only requests with equal keys are decoded together."""

    beam: int = 4
    nbest: int = 1
    alpha: float = 0.6
    max_length: int | None = None  # output subwords, EOS included; None: the translator's a·|x| + b
    no_repeat_ngram: int = 0  # N > 0: never the same N subwords in a row twice

    def options(self, base: SearchOptions) -> SearchOptions:
        changes: dict[str, Any] = dict(beam=self.beam, nbest=self.nbest, alpha=self.alpha, no_repeat_ngram=self.no_repeat_ngram)
        if self.max_length is not None:
            changes.update(max_len_a=0.0, max_len_b=self.max_length)
        return replace(base, **changes)


def source_lengths(translator: Translator, texts: list[str]) -> list[int]:
    """Each text's source subwords, as the translator will feed them (truncated to its input limit)."""
    return [min(len(ids), translator.max_input_len) for ids in translator.src_tok.encode(texts)]


@dataclass(eq=False)
class _Request:
    texts: list[str]
    key: DecodeKey
    extra: Any  # what else its decoding needs: for a translation whether to align, for a completion where its text streams to
    tokens: int  # its share of a batch: source subwords (+ EOS) × beam; a completion's prompt and new tokens
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchRecord:
    key: DecodeKey
    requests: int
    texts: int
    tokens: int
    seconds: float


class Batcher:
    def __init__(
        self,
        translator: Translator,
        *,
        max_batch_tokens: int = 4096,
        max_batch_texts: int = 128,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        history: int = 1000,
    ):
        if max_batch_tokens < 1 or max_batch_texts < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch_tokens, max_batch_texts and max_queue must be ≥ 1 and max_wait_ms ≥ 0")
        self.translator = translator
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batches: collections.deque[BatchRecord] = collections.deque(maxlen=history)  # the latest batches
        self.counts = collections.Counter()  # batches, requests, texts decoded; cancelled batches apart (in none of those)
        self._pending: list[_Request] = []
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task | None = None
        self._arrived: asyncio.Event | None = None
        self._closing = False
        self._busy = False
        self._trimmed = 0.0

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._worker is not None:
            return
        self._closing = False
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiayn-model")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="aiayn-batcher")

    async def close(self) -> None:
        """Take no new requests, decode every pending one, then stop the model thread."""
        if self._worker is None:
            return
        self._closing = True
        self._arrived.set()
        try:
            await self._worker
        finally:
            executor, self._worker, self._executor = self._executor, None, None
            await asyncio.to_thread(executor.shutdown, wait=True)  # lets model work already started finish

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._closing

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be decoded (not counting the batch the model is working on)."""
        return sum(1 for r in self._pending if not r.future.done())

    def stats(self) -> dict:
        recent = list(self.batches)
        return {
            "queue_depth": self.queue_depth,
            "busy": self._busy,
            "batches": self.counts["batches"],
            "requests": self.counts["requests"],
            "texts": self.counts["texts"],
            "cancelled_batches": self.counts["cancelled"],
            "max_requests_per_batch": max((b.requests for b in recent), default=0),
            "mean_requests_per_batch": round(sum(b.requests for b in recent) / len(recent), 2) if recent else 0.0,
        }

    # ------------------------------------------------------------ requests
    async def translate(
        self, texts: list[str], key: DecodeKey = DecodeKey(), alignment: bool = False, lengths: list[int] | None = None
    ) -> list[Translation]:
        """Queue texts for decoding with the given search options; their translations in order.
        `lengths`: their `source_lengths`, where the caller has them already."""
        if not self.running:
            raise BatcherClosed("the server is shutting down")
        if self.queue_depth >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already waiting")
        lengths = lengths if lengths is not None else source_lengths(self.translator, texts)
        request = _Request(texts, key, alignment, (sum(lengths) + len(lengths)) * key.beam, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._arrived.set()
        return await request.future

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run fn() on the model thread, between batches (the model is never used concurrently)."""
        if not self.running:
            raise BatcherClosed("the server is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ------------------------------------------------------------ the worker
    def _live(self) -> list[_Request]:
        self._pending = [r for r in self._pending if not r.future.done()]  # drop those whose caller has gone
        return self._pending

    def _fill(self, key: DecodeKey) -> tuple[int, int]:
        tokens = texts = 0
        for r in self._live():
            if r.key == key:
                tokens, texts = tokens + r.tokens, texts + len(r.texts)
        return tokens, texts

    def _full(self, key: DecodeKey) -> bool:
        tokens, texts = self._fill(key)
        return tokens >= self.max_batch_tokens or texts >= self.max_batch_texts

    def _take(self, key: DecodeKey) -> list[_Request]:
        """The oldest pending requests with this key that fit in one batch (always at least one)."""
        batch, rest, tokens, texts = [], [], 0, 0
        for r in self._live():
            fits = r.key == key and (
                not batch or (tokens + r.tokens <= self.max_batch_tokens and texts + len(r.texts) <= self.max_batch_texts)
            )
            if fits:
                batch.append(r)
                tokens, texts = tokens + r.tokens, texts + len(r.texts)
            else:
                rest.append(r)
        self._pending = rest
        return batch

    async def _run(self) -> None:
        try:
            await self._serve_batches()
        except BaseException as e:  # never leave callers waiting on a dead worker
            if not isinstance(e, asyncio.CancelledError):
                log.exception("the batcher stopped unexpectedly")
            self._closing = True
            for r in self._pending:
                if not r.future.done():
                    r.future.set_exception(BatcherClosed("the batcher stopped"))
            self._pending = []
            raise

    async def _release_memory(self) -> None:
        """Once the queue is empty, give freed memory back to the OS (at most once a second, on the
        idle model thread, not the event loop): the allocator otherwise keeps the peak of the last
        burst of large batches resident."""
        now = time.monotonic()
        if now - self._trimmed > 1.0:
            self._trimmed = now
            await asyncio.get_running_loop().run_in_executor(self._executor, runtime.release_freed_memory)

    async def _serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._live() and self.counts["batches"]:
                await self._release_memory()
            while not self._live():
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            head = self._pending[0]
            # Wait for company: until the batch is full or the oldest request has waited max_wait.
            while not self._closing and not self._full(head.key):
                remaining = head.arrived + self.max_wait - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(head.key)
            if not batch:  # the head's caller left while we waited
                continue
            started = time.monotonic()
            self._busy = True
            try:
                results = await loop.run_in_executor(self._executor, self._decode, batch)
            except SearchCancelled:  # every caller of the batch had timed out: nobody to answer
                self.counts.update(cancelled=1)
                continue
            except Exception as e:  # noqa: BLE001 - the callers get the error; the worker goes on
                log.exception("decoding a batch of %d requests failed", len(batch))
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            finally:
                self._busy = False
            for r, result in zip(batch, results):
                if not r.future.done():
                    r.future.set_result(result)
            n_texts = sum(len(r.texts) for r in batch)
            self.batches.append(BatchRecord(head.key, len(batch), n_texts, sum(r.tokens for r in batch), time.monotonic() - started))
            self.counts.update(batches=1, requests=len(batch), texts=n_texts)

    def _decode(self, batch: list[_Request]) -> list[list[Translation]]:
        """On the model thread: one translate call for the whole batch, split back per request."""
        translator = copy.copy(self.translator)  # a shallow copy with this batch's search options
        translator.options = batch[0].key.options(self.translator.options)
        translator.max_tokens = self.max_batch_tokens
        texts = [t for r in batch for t in r.texts]
        alignment = any(r.extra for r in batch)
        gone = lambda: all(r.future.done() for r in batch)  # noqa: E731 - each caller's wait was cancelled (timed out)
        translations = translator.translate(texts, alignment_layer=-1 if alignment else None, stop=gone)
        out, start = [], 0
        for r in batch:
            out.append(translations[start : start + len(r.texts)])
            start += len(r.texts)
        return out


class CompletionBatcher(Batcher):
    """Dynamic batching for a language model: prompts of requests with equal generation options
    (the key) are continued together; each request's new text streams to its own callback."""

    def __init__(self, generator, **kwargs):
        super().__init__(generator, **kwargs)

    async def complete(self, prompts: list[str], options, on_text: Callable[[int, str], None] | None = None, tokens: int = 0):
        """Continue the prompts with `options` (a GenerationOptions: the batching key); on_text(i, new_text)
        is called on the event loop as prompt i's text grows. Returns the Completions in order."""
        if not self.running:
            raise BatcherClosed("the server is shutting down")
        if self.queue_depth >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already waiting")
        loop = asyncio.get_running_loop()
        stream = None
        if on_text is not None:
            stream = lambda i, text: loop.call_soon_threadsafe(on_text, i, text)  # noqa: E731 - called on the model thread
        cost = tokens or len(prompts) * options.max_new_tokens
        request = _Request(prompts, options, stream, cost, loop.create_future())
        self._pending.append(request)
        self._arrived.set()
        return await request.future

    def _decode(self, batch: list[_Request]) -> list[list]:
        prompts = [t for r in batch for t in r.texts]
        owner = [(r, i) for r in batch for i in range(len(r.texts))]

        def on_text(row: int, text: str) -> None:
            r, i = owner[row]
            if r.extra is not None and not r.future.done():
                r.extra(i, text)

        gone = lambda: all(r.future.done() for r in batch)  # noqa: E731
        streaming = any(r.extra is not None for r in batch)
        completions = self.translator.generate(prompts, batch[0].key, on_text=on_text if streaming else None, stop=gone)
        out, start = [], 0
        for r in batch:
            out.append(completions[start : start + len(r.texts)])
            start += len(r.texts)
        return out
