"""`aiayn serve` on a language model: the OpenAI completions API, streamed with server-sent events.

  POST /v1/completions  {"prompt": "..." | [...], "max_tokens": 16, "temperature": 1, "top_p": 1,
                         "stop": null | "..." | [...], "stream": false, "seed": null,
                         "top_k": 0, "min_p": 0, "repetition_penalty": 1}
                        → {"id", "object": "text_completion", "created", "model",
                           "choices": [{"text", "index", "logprobs": null, "finish_reason"}], "usage"}
                        With "stream": true, `data: {chunk}` events as the text grows, then `data: [DONE]`.
  POST /v1/attention    {"text": "..."} → its tokens and self-attention weights[layer][head][query][key]

Concurrent requests with the same options are continued together (serve.batcher.CompletionBatcher).
A request with a seed is continued alone, so that its text depends on the seed only.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from aiayn.generate.complete import GenerationOptions, Generator


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields this server does not use (user, logit_bias, ...)

    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int = Field(16, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = Field(None, ge=0)
    echo: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 stop strings, none empty")
        return stops

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def options(self) -> GenerationOptions:
        return GenerationOptions(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(self.stop or ()),
            seed=self.seed,
        )


class LMAttentionRequest(BaseModel):
    text: str = Field(..., min_length=1)


def model_info(generator: Generator, name: str, path: str | None) -> dict:
    c = generator.model.config
    return {
        "id": name,
        "object": "model",
        "task": "lm",
        "path": path,
        "parameters": generator.model.num_parameters(),
        "config": {
            "d_model": c.d_model,
            "heads": c.n_heads,
            "d_ff": c.d_ff,
            "layers": c.n_layers,
            "context": c.context,
            "vocab_size": c.vocab_size,
        },
        "device": str(generator.device),
        "precision": generator.precision,
    }


def add_routes(app: FastAPI, generator: Generator, batcher, settings, run, name: str) -> None:
    """The language model's routes on the service's app (errors, limits and the batcher are the app's)."""

    def check(req: CompletionRequest) -> list[str]:
        prompts = req.prompts()
        if not prompts:
            raise HTTPException(422, "prompt: give a text or a list of texts")
        if len(prompts) > settings.max_texts:
            raise HTTPException(413, f"{len(prompts)} prompts in one request; the limit is {settings.max_texts}")
        for i, p in enumerate(prompts):
            if len(p) > settings.max_chars:
                raise HTTPException(413, f"prompt {i} has {len(p)} characters; the limit is {settings.max_chars}")
        cost = len(prompts) * req.max_tokens
        if cost > settings.max_request_cost:
            raise HTTPException(
                413, f"this request asks for {cost} new tokens (prompts × max_tokens); the limit is {settings.max_request_cost}"
            )
        return prompts

    def usage(prompts, completions) -> dict:
        prompt_tokens = sum(len(generator.encode(p)) for p in prompts)
        completion_tokens = sum(len(c.tokens) for c in completions)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}

    @app.post("/v1/completions", tags=["language model"])
    async def completions(req: CompletionRequest, request: Request):
        """Continue the prompt(s), in the shape of OpenAI's completions API; "stream": true sends server-sent events."""
        prompts = check(req)
        options = req.options()
        cost = settings.max_batch_tokens if req.seed is not None else len(prompts) * req.max_tokens  # a seeded request runs alone
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def body(choices: list[dict], **more) -> dict:
            return {"id": ident, "object": "text_completion", "created": created, "model": name, "choices": choices, **more}

        if not req.stream:
            results = await run(batcher.complete(prompts, options, tokens=cost), "completion", request)
            choices = [
                {"text": (p if req.echo else "") + c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                for i, (p, c) in enumerate(zip(prompts, results))
            ]
            return JSONResponse(body(choices, usage=usage(prompts, results)))

        queue: asyncio.Queue = asyncio.Queue()
        # no disconnect watcher here: the response streams, and when its client goes the stream's task is
        # cancelled, which cancels the work (below)
        work = asyncio.ensure_future(
            run(batcher.complete(prompts, options, lambda i, text: queue.put_nowait((i, text)), tokens=cost), "completion")
        )
        work.add_done_callback(lambda _: queue.put_nowait(None))

        async def events():
            try:
                if req.echo:
                    for i, p in enumerate(prompts):
                        yield _event(body([{"text": p, "index": i, "logprobs": None, "finish_reason": None}]))
                while (item := await queue.get()) is not None:
                    i, text = item
                    yield _event(body([{"text": text, "index": i, "logprobs": None, "finish_reason": None}]))
                try:
                    results = work.result()
                except HTTPException as e:
                    yield _event({"error": "error", "message": str(e.detail), "status": e.status_code})
                    return
                for i, c in enumerate(results):
                    yield _event(body([{"text": "", "index": i, "logprobs": None, "finish_reason": c.finish_reason}]))
                yield "data: [DONE]\n\n"
            finally:
                if not work.done():  # the client went away mid-stream: its work stops
                    work.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/attention", tags=["language model"])
    async def attention(req: LMAttentionRequest) -> Response:
        """The tokens of a text and the self-attention weights over them, [layer][head][query][key]."""
        if len(req.text) > settings.max_chars:
            raise HTTPException(413, f"the text has {len(req.text)} characters; the limit is {settings.max_chars}")
        ids = generator.encode(req.text)
        if len(ids) > settings.max_attention_tokens:
            raise HTTPException(413, f"the text has {len(ids)} tokens; attention maps are limited to {settings.max_attention_tokens}")
        data = await run(batcher.run_exclusive(lambda: attention_json(generator, ids)), "attention map")
        return Response(data, media_type="application/json")


def attention_json(generator: Generator, ids: list[int]) -> bytes:
    import torch

    with torch.no_grad():
        _, weights = generator.model.hidden(torch.tensor([ids], device=generator.device), need_weights=True)
    tok = generator.tokenizer
    pieces = [tok.decode(ids[: i + 1])[len(tok.decode(ids[:i])) :] for i in range(len(ids))]  # each token's own text
    layers = [[[[round(float(v), 4) for v in row] for row in head] for head in w[0].tolist()] for w in weights]
    return json.dumps({"tokens": pieces, "ids": ids, "weights": layers}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
