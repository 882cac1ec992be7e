"""`aiayn serve`: a translation service (FastAPI + uvicorn) with dynamic batching and a web page.

Endpoints:
  POST /v1/translate   {"texts": [...], "beam": 4, "nbest": 1, "length_penalty": 0.6, "max_length": null,
                        "no_repeat_ngram": 0, "alignment": false} → {"translations": [...]}
  POST /v1/attention   {"text": "...", "beam": 4, "no_repeat_ngram": 0, "encoder": false} → the data of `aiayn attention`
  GET  /v1/models      the model: name, path, config summary, parameter count
  GET  /health         {"status": "ok", "queue_depth": ...} (503 while shutting down)
  GET  /               a page to try the model, with a cross-attention heat map
  GET  /docs, /openapi.json

Every error is a JSON object {"error": kind, "message": text} (422 adds "details"), never a
stack trace: 413 for a body, a text or a list over the limits (the body limit is enforced before
anything is parsed), 422 for a request that does not fit the schema, 504 when a request is not
answered within the timeout, 503 while the server is shutting down or its queue is full.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiayn import __version__
from aiayn.generate.complete import Generator
from aiayn.generate.images import ImageGenerator
from aiayn.generate.translate import Translation, Translator
from aiayn.models import RNNSearch, architecture_of
from aiayn.serve import classify, completions, samples, zero_shot
from aiayn.serve.batcher import Batcher, BatcherClosed, CompletionBatcher, DecodeKey, QueueFull, source_lengths
from aiayn.vision import Classifier
from aiayn.zero_shot import DualEncoder

log = logging.getLogger("aiayn.serve")
STATIC = Path(__file__).parent / "static"
MAX_BEAM = 16
MAX_OUTPUT_LENGTH = 1024


@dataclass
class ServeSettings:
    max_texts: int = 64  # texts per request
    max_chars: int = 1000  # characters per text
    max_body_bytes: int = 1 << 20  # request body
    timeout: float = 30.0  # seconds from arrival to answer (queueing included)
    max_batch_tokens: int = 4096  # source subwords × beam decoded together
    max_batch_texts: int = 128  # texts decoded together; 1 turns dynamic batching off
    max_wait_ms: float = 5.0  # how long the oldest waiting request waits for others to join it
    max_queue: int = 1024  # requests waiting at once; more get 503
    max_attention_tokens: int = 200  # source subwords for /v1/attention (its answer grows with the square)
    max_request_cost: int = 81920  # beam × output cap summed over a request's texts (64 texts of ~270 subwords at beam 4); more: 413
    shutdown_timeout: float = 30.0  # on SIGTERM/SIGINT, how long in-flight requests may take to finish

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value < 0 or (value == 0 and name != "max_wait_ms"):
                raise ValueError(f"serve setting {name} must be positive (got {value})")


# ---------------------------------------------------------------- schema
def _check_unicode(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows lone surrogates ("\\ud800"); text cannot hold them
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    return text


MAX_NGRAM = 16
NO_REPEAT_NGRAM = "never output the same N subwords in a row twice (fairseq's --no-repeat-ngram-size); 0: off"


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] = Field(min_length=1, description="sentences to translate, one per entry; the answer keeps their order")
    beam: int = Field(4, ge=1, le=MAX_BEAM, description="beam size; 1 is greedy search")
    nbest: int = Field(1, ge=1, le=MAX_BEAM, description="also return the n best hypotheses (at most beam)")
    length_penalty: float = Field(0.6, ge=0.0, le=10.0, allow_inf_nan=False, description="length penalty α, ((5+|Y|)/6)^α")
    max_length: int | None = Field(
        None,
        ge=1,
        le=MAX_OUTPUT_LENGTH,
        description="at most this many output subwords (end of sentence included); default: source length + 50",
    )
    no_repeat_ngram: int = Field(0, ge=0, le=MAX_NGRAM, description=NO_REPEAT_NGRAM)
    alignment: bool = Field(False, description="also return, per output subword, the source subword it attends to most")

    @field_validator("texts")
    @classmethod
    def _valid_unicode(cls, texts: list[str]) -> list[str]:
        for i, text in enumerate(texts):
            _check_unicode(text, f"text {i}")
        return texts

    @model_validator(mode="after")
    def _nbest_within_beam(self) -> "TranslateRequest":
        if self.nbest > self.beam:
            raise ValueError(f"nbest ({self.nbest}) cannot exceed beam ({self.beam})")
        return self


class Hypothesis(BaseModel):
    text: str
    score: float | None


class TranslationOut(BaseModel):
    text: str
    score: float | None = Field(description="log-probability / length penalty (what beam search ranks by)")
    nbest: list[Hypothesis] | None = None
    alignment: list[tuple[int, int]] | None = Field(None, description="(source subword, output subword) index pairs")
    source_tokens: list[str] | None = None
    target_tokens: list[str] | None = None


class TranslateResponse(BaseModel):
    translations: list[TranslationOut]


class AttentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, description="one sentence")
    beam: int = Field(4, ge=1, le=MAX_BEAM)
    no_repeat_ngram: int = Field(0, ge=0, le=MAX_NGRAM, description=NO_REPEAT_NGRAM)
    encoder: bool = Field(False, description="also return the encoder self-attention")

    @field_validator("text")
    @classmethod
    def _valid_unicode(cls, text: str) -> str:
        return _check_unicode(text, "the text")


class ErrorResponse(BaseModel):
    error: str
    message: str


ERRORS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    499: "client_closed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": ERRORS.get(status, "error"), "message": message, **extra}, status_code=status)


class ClientGone(Exception):
    """The client closed its connection before the answer."""


async def _unless_disconnected(work, request: Request, timeout: float):
    """Await `work` for at most `timeout` seconds, cancelling it (ClientGone) if the client goes first.
    After the body, the only message a server sends the app is http.disconnect."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if watch in done and watch.exception() is None:
            raise ClientGone()
        raise asyncio.TimeoutError()
    finally:
        watch.cancel()
        if not task.done():  # gone, timed out, or this handler cancelled: the request leaves the queue, or its batch may stop
            task.cancel()


def request_cost(translator: Translator, lengths: list[int], key: DecodeKey) -> int:
    """The decoding work a request may ask for: beam × (each text's output cap), summed over its texts
    (`lengths`: their source subwords, batcher.source_lengths)."""
    options = key.options(translator.options)
    return key.beam * sum(options.output_cap(n) for n in lengths)


# ---------------------------------------------------------------- body limit
class BodyLimit:
    """ASGI middleware: the whole body is read here, before anything parses it, and refused with
    413 when the declared Content-Length or the bytes actually received pass max_bytes, or with
    408 when it does not arrive within `timeout` seconds (slow clients cannot hold a request open)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error(413, f"the request body is larger than the limit of {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await error(400, "invalid Content-Length header")(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await too_large(scope, receive, send)

        chunks, size = [], 0

        async def read_body() -> bool:
            nonlocal size
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    return True
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return True

        try:
            connected = await asyncio.wait_for(read_body(), self.timeout)
        except asyncio.TimeoutError:
            return await error(408, f"the request body did not arrive within {self.timeout:g} s")(scope, receive, send)
        if not connected:
            return  # the client has gone: nobody to answer
        if size > self.max_bytes:
            return await too_large(scope, receive, send)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)


# ---------------------------------------------------------------- the app
def load_translator(model: str | Path, device: str = "auto", precision: str = "fp32"):
    """What serves the checkpoint, by its task: a Translator, a Generator (language model), a Classifier,
    a DualEncoder (CLIP) or an ImageGenerator (DiT)."""
    from aiayn import runtime
    from aiayn.io.checkpoint import load_model

    device = runtime.device(device)
    loaded, ckpt = load_model(model, device)
    if ckpt.task == "lm":
        return Generator(loaded, ckpt.tokenizer, device=device, precision=precision)
    if ckpt.task == "images":
        return Classifier(loaded, json.loads(ckpt.assets["classes"]), json.loads(ckpt.assets["image"]), device, precision)
    if ckpt.task == "image-text":
        return DualEncoder.load(model, str(device), precision)
    if ckpt.task == "image-generation":
        return ImageGenerator.from_checkpoint(loaded, ckpt, device, precision)
    return Translator(loaded, *ckpt.tokenizers, device=device, precision=precision, warn=lambda message: log.warning("%s", message))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # JSON has no infinities


def _model_info(translator: Translator, name: str, path: str | None) -> dict:
    model = translator.models[0]
    c = model.config
    if isinstance(model, RNNSearch):
        shape = {"d_embed": c.d_embed, "d_hidden": c.d_hidden, "d_attn": c.d_attn, "encoder_layers": c.n_encoder_layers}
    else:
        shape = {
            "d_model": c.d_model,
            "heads": c.n_heads,
            "d_ff": c.d_ff,
            "encoder_layers": c.n_encoder_layers,
            "decoder_layers": c.n_decoder_layers,
            "positional": c.positional,
            "pre_norm": c.pre_norm,
        }
    return {
        "id": name,
        "path": path,
        "parameters": model.num_parameters(),
        "architecture": architecture_of(model).name,
        "config": {**shape, "src_vocab_size": c.src_vocab_size, "tgt_vocab_size": c.tgt_vocab_size},
        "device": str(translator.device),
        "precision": translator.precision,
    }


def create_app(
    model: str | Path | Translator,
    settings: ServeSettings | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    name: str | None = None,
) -> FastAPI:
    """The service for a checkpoint (weights file or run directory, loaded now, so that a bad
    path fails before the server starts) or for a ready Translator or Generator (a language model:
    the completions API, serve.completions)."""
    settings = settings or ServeSettings()
    if isinstance(model, (Translator, Generator, Classifier, DualEncoder, ImageGenerator)):
        translator, path = model, None
    else:
        translator, path = load_translator(model, device, precision), str(model)
    name = name or (Path(path).name if path else "model")
    is_lm, is_clip = isinstance(translator, Generator), isinstance(translator, DualEncoder)
    is_dit = isinstance(translator, ImageGenerator)
    is_images = isinstance(translator, Classifier) or is_clip or is_dit
    batcher = (CompletionBatcher if is_lm else Batcher)(
        translator,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_texts=settings.max_batch_texts,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
    )
    if is_lm:
        info = completions.model_info(translator, name, path)
    elif is_clip:
        info = zero_shot.model_info(translator, name, path)
    elif is_dit:
        info = samples.model_info(translator, name, path)
    elif is_images:
        info = classify.model_info(translator, name, path)
    else:
        info = _model_info(translator, name, path)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        log.info("serving %s (%s parameters) on %s", name, f"{info['parameters']:,}", info["device"])
        try:
            yield
        finally:
            log.info("shutting down: finishing %d waiting requests", batcher.queue_depth)
            await batcher.close()

    app = FastAPI(
        title=f"aiayn {'language model' if is_lm else 'image-text' if is_clip else 'image generation' if is_dit else 'image classification' if is_images else 'translation'} service",
        description="The Transformer of 'Attention Is All You Need': "
        + (
            "text generation (the OpenAI completions API) with dynamic batching"
            if is_lm
            else "zero-shot image classification and image-text embeddings"
            if is_clip
            else "class-conditional image generation (a diffusion transformer)"
            if is_dit
            else "image classification"
            if is_images
            else "translation with dynamic batching"
        )
        + ".",
        version=__version__,
        lifespan=lifespan,
        responses={code: {"model": ErrorResponse} for code in (413, 422, 503, 504)},
    )
    app.state.batcher, app.state.translator, app.state.settings = batcher, translator, settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout=settings.timeout)

    # ------------------------------------------------------------ errors: JSON, never a traceback
    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()[:20]
        ]  # no "input": never echo a (possibly huge) request back
        if any(d["type"] == "json_invalid" for d in details):
            return error(422, "the request body is not valid JSON", details=details)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "body"
        return error(422, f"{where}: {first['msg']}", details=details)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)  # uvicorn logs the traceback
        return error(500, "internal server error")

    async def run(work, what: str, request: Request | None = None):
        """Await model work under the request timeout, mapping failures to clean errors. With the
        request, a client that disconnects cancels its work: dropped from the queue while waiting,
        and its batch stops at the next step once every caller of the batch has gone."""
        try:
            if request is None:
                return await asyncio.wait_for(work, settings.timeout)
            return await _unless_disconnected(work, request, settings.timeout)
        except ClientGone:
            log.info("the client of a %s disconnected; its work is dropped", what)
            raise HTTPException(499, "the client closed the connection") from None
        except asyncio.TimeoutError:
            raise HTTPException(
                504, f"the {what} took longer than the limit of {settings.timeout:g} s; try fewer or shorter texts"
            ) from None
        except BatcherClosed:
            raise HTTPException(503, "the server is shutting down") from None
        except QueueFull:
            raise HTTPException(503, "the server is overloaded; try again shortly", headers={"Retry-After": "1"}) from None
        except HTTPException:
            raise
        except Exception:
            log.exception("the %s failed", what)
            raise HTTPException(500, f"the {what} failed (see the server log)") from None

    def check_text(i: int | None, text: str) -> None:
        if len(text) > settings.max_chars:
            where = f"text {i}" if i is not None else "the text"
            raise HTTPException(413, f"{where} has {len(text)} characters; the limit is {settings.max_chars}")

    # ------------------------------------------------------------ routes
    if is_lm:
        completions.add_routes(app, translator, batcher, settings, run, name)
    elif is_clip:
        zero_shot.add_routes(app, translator, batcher, settings, run)
    elif is_dit:
        samples.add_routes(app, translator, batcher, settings, run)
    elif is_images:
        classify.add_routes(app, translator, batcher, settings, run)
    else:

        @app.post("/v1/translate", response_model=TranslateResponse, response_model_exclude_none=True, tags=["translation"])
        async def translate(req: TranslateRequest, request: Request) -> TranslateResponse:
            """Translate sentences; the answer has one entry per text, in order."""
            if len(req.texts) > settings.max_texts:
                raise HTTPException(413, f"{len(req.texts)} texts in one request; the limit is {settings.max_texts}")
            for i, text in enumerate(req.texts):
                check_text(i, text)
            key = DecodeKey(
                beam=req.beam, nbest=req.nbest, alpha=req.length_penalty, max_length=req.max_length, no_repeat_ngram=req.no_repeat_ngram
            )
            lengths = source_lengths(translator, req.texts)  # tokenized once, for the cost and for the batcher
            cost = request_cost(translator, lengths, key)
            if cost > settings.max_request_cost:
                raise HTTPException(
                    413,
                    f"this request may cost {cost} beam × output steps (beam {req.beam} × each text's output cap, summed); "
                    f"the limit is {settings.max_request_cost}: send fewer or shorter texts, a smaller beam or a max_length",
                )
            results = await run(batcher.translate(req.texts, key, req.alignment, lengths), "translation", request)
            return TranslateResponse(translations=[_translation_out(translator, tr, req) for tr in results])

        @app.post(
            "/v1/attention",
            tags=["translation"],
            responses={
                200: {
                    "description": "source and target subwords, the translation, and the weights cross[layer][head][target][source] (encoder[layer][head][source][source] with encoder=true)"
                }
            },
        )
        async def attention(req: AttentionRequest) -> Response:
            """Translate one sentence and return its attention weights, as `aiayn attention --json`."""
            check_text(None, req.text)
            n = len(translator.src_tok.encode([req.text])[0])
            if n > settings.max_attention_tokens:
                raise HTTPException(413, f"the text has {n} subwords; attention maps are limited to {settings.max_attention_tokens}")
            body = await run(batcher.run_exclusive(lambda: _attention_json(translator, req)), "attention map")
            return Response(body, media_type="application/json")

    @app.get("/v1/models", tags=["service"])
    async def models() -> dict:
        """The model this server runs."""
        return {"models": [info]}

    @app.get("/health", tags=["service"])
    async def health() -> JSONResponse:
        """ok (200) while taking requests, shutting_down (503) after; with the batcher's counters."""
        ok = batcher.running
        return JSONResponse({"status": "ok" if ok else "shutting_down", **batcher.stats()}, status_code=200 if ok else 503)

    page_name = (
        "generate.html"
        if is_lm
        else "zero_shot.html"
        if is_clip
        else "samples.html"
        if is_dit
        else "classify.html"
        if is_images
        else "index.html"
    )
    page = (STATIC / page_name).read_text(encoding="utf-8")
    csp = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _translation_out(translator: Translator, tr: Translation, req: TranslateRequest) -> TranslationOut:
    out = TranslationOut(text=tr.text, score=_finite(tr.score))
    if req.nbest > 1:
        out.nbest = [Hypothesis(text=t, score=_finite(s)) for t, s in (tr.nbest or [(tr.text, tr.score)])]
    if req.alignment:
        out.alignment = [(s, t) for t, s in enumerate(tr.alignment or [])]
        out.source_tokens = translator.src_tok.pieces(tr.src_tokens)
        out.target_tokens = translator.tgt_tok.pieces(tr.tokens)
    return out


def _attention_json(translator: Translator, req: AttentionRequest) -> bytes:
    """On the model thread: the attention maps, rounded, already serialized (they can be large)."""
    from aiayn.heatmaps import attention_maps

    own = copy.copy(translator)
    own.options = DecodeKey(beam=req.beam, no_repeat_ngram=req.no_repeat_ngram).options(translator.options)
    data = attention_maps(own, req.text).to_dict()
    if not req.encoder:
        data.pop("encoder")

    def rounded(x):
        return [rounded(v) for v in x] if isinstance(x, list) else round(x, 4)

    for kind in ("cross", "encoder"):
        if kind in data:
            data[kind] = rounded(data[kind])
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------- running it
def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    device: str = "auto",
    precision: str = "fp32",
    name: str | None = None,
    log_level: str = "info",
) -> None:
    """Load the model, then serve it with uvicorn until SIGINT/SIGTERM; in-flight requests finish
    (for up to settings.shutdown_timeout seconds) and queued ones are decoded before it exits."""
    import uvicorn

    settings = settings or ServeSettings()
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(model, settings, device=device, precision=precision, name=name)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout)),
    )
    uvicorn.Server(config).run()
