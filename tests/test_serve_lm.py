"""`aiayn serve` on a language model: the OpenAI completions shape, streaming with server-sent
events, batching of concurrent requests, limits, the attention endpoint and the page."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
httpx = pytest.importorskip("httpx")

from aiayn import models  # noqa: E402
from aiayn.data.text import CharTokenizer  # noqa: E402
from aiayn.generate.complete import GenerationOptions, Generator  # noqa: E402
from aiayn.serve import ServeSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def generator():
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.\n")
    torch.manual_seed(0)
    _, cfg = models.preset_config("gpt-tiny", vocab_size=tok.vocab_size, n_layers=2, context=96)
    return Generator(models.build("gpt", cfg).eval(), tok)


@asynccontextmanager
async def api(model, **settings):
    app = create_app(model, ServeSettings(**settings), name="tiny-gpt")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://aiayn.test", timeout=60) as client:
            client.app = app
            yield client


def run(coro):
    return asyncio.run(coro)


def test_completions_in_the_openai_shape_equal_the_generator(generator):
    async def main():
        async with api(generator) as client:
            one = await client.post("/v1/completions", json={"prompt": "in the", "max_tokens": 12, "temperature": 0})
            two = await client.post(
                "/v1/completions", json={"prompt": ["and so", "it was"], "max_tokens": 8, "temperature": 0, "echo": True}
            )
            models_ = await client.get("/v1/models")
            page = await client.get("/")
            return one, two, models_, page

    one, two, models_, page = run(main())
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny-gpt" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    expected = generator.generate(["in the"], GenerationOptions(max_new_tokens=12, temperature=0))[0]
    assert choice["text"] == expected.text and choice["finish_reason"] == expected.finish_reason and choice["index"] == 0
    assert body["usage"]["completion_tokens"] == len(expected.tokens)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    texts = [c["text"] for c in two.json()["choices"]]
    alone = [generator.generate([p], GenerationOptions(max_new_tokens=8, temperature=0))[0].text for p in ("and so", "it was")]
    assert texts == ["and so" + alone[0], "it was" + alone[1]]  # echo puts the prompt first
    assert models_.json()["models"][0]["task"] == "lm"
    assert "generate.js" in page.text


def test_streaming_sends_the_text_as_server_sent_events(generator):
    async def main():
        async with api(generator) as client:
            async with client.stream(
                "POST", "/v1/completions", json={"prompt": "in", "max_tokens": 20, "temperature": 1.0, "seed": 5, "stream": True}
            ) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
            whole = await client.post("/v1/completions", json={"prompt": "in", "max_tokens": 20, "temperature": 1.0, "seed": 5})
            return events, whole.json()

    events, whole = run(main())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 2 and all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]  # seeded: the same text both ways
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_concurrent_requests_are_batched_and_each_gets_its_own_text(generator):
    prompts = ["in the beginning", "a", "and god said", "the earth", "light", "it was so"] * 3

    async def main():
        async with api(generator, max_wait_ms=30) as client:
            batcher = client.app.state.batcher
            answers = await asyncio.gather(
                *(client.post("/v1/completions", json={"prompt": p, "max_tokens": 10, "temperature": 0}) for p in prompts)
            )
            return answers, list(batcher.batches)

    answers, batches = run(main())
    alone = {p: generator.generate([p], GenerationOptions(max_new_tokens=10, temperature=0))[0].text for p in set(prompts)}
    assert [a.json()["choices"][0]["text"] for a in answers] == [alone[p] for p in prompts]
    assert sum(b.requests for b in batches) == len(prompts) and max(b.requests for b in batches) > 1


@pytest.mark.parametrize(
    "body,status,words",
    [
        ({"prompt": "x" * 2000}, 413, "characters"),
        ({"prompt": ["a"] * 100}, 413, "prompts"),
        ({"prompt": "a", "max_tokens": 0}, 422, "max_tokens"),
        ({"prompt": "a", "temperature": -1}, 422, "temperature"),
        ({"prompt": "a", "stop": ["", "x"]}, 422, "stop"),
        ({"prompt": []}, 422, "prompt"),
        ({"prompt": "a", "max_tokens": 4000, "n": 1}, 413, "new tokens"),
    ],
)
def test_bad_requests_get_clear_errors(generator, body, status, words):
    async def main():
        async with api(generator, max_request_cost=2048) as client:
            return await client.post("/v1/completions", json=body)

    r = run(main())
    assert r.status_code == status, r.text
    data = r.json()
    assert words in data["message"] and "Traceback" not in r.text


def test_the_attention_of_each_token_sums_to_one_over_what_it_sees(generator):
    async def main():
        async with api(generator) as client:
            return await client.post("/v1/attention", json={"text": "in the beginning"})

    data = run(main()).json()
    n = len(data["tokens"])
    assert "".join(data["tokens"]) == "in the beginning"[: sum(len(t) for t in data["tokens"])]
    weights = torch.tensor(data["weights"])  # [layers, heads, n, n]
    assert weights.shape == (2, 4, n, n)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, n), atol=2e-3, rtol=0)
    assert float(weights.triu(1).abs().max()) == 0.0  # no token attends to a later one
