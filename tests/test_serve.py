"""`aiayn serve`: the HTTP API against the real app (httpx), the dynamic batcher, limits, hostile
input, timeouts, concurrency, graceful shutdown and the command line."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
httpx = pytest.importorskip("httpx")

from _serving import LiveServer  # noqa: E402

from aiayn.generate.translate import SearchOptions, Translation  # noqa: E402
from aiayn.serve import Batcher, DecodeKey, ServeSettings, create_app, load_translator  # noqa: E402

SENTENCES = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "And the evening and the morning were the first day.",
    "And God called the light Day, and the darkness he called Night.",
    "These are the generations of the heavens and of the earth.",
    "And the LORD God planted a garden eastward in Eden.",
    "Unto the woman he said, I will greatly multiply thy sorrow.",
    "And Adam knew Eve his wife.",
]


@pytest.fixture(scope="module")
def translator(trained_run):
    return load_translator(trained_run, device="cpu")


@asynccontextmanager
async def api(model, **settings):
    """An httpx client on the real app (lifespan included: the batcher runs), in-process."""
    app = create_app(model, ServeSettings(**settings))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://aiayn.test", timeout=60) as client:
            client.app = app
            yield client


def run(coro):
    return asyncio.run(coro)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.002)


def assert_error(response, status: int, words: str | None = None) -> dict:
    """A clean JSON error: the status, {"error", "message"}, no trace of Python internals."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert isinstance(data.get("error"), str) and isinstance(data.get("message"), str), data
    for leak in ("Traceback", 'File "', "site-packages", "aiayn/serve"):
        assert leak not in response.text
    if words:
        assert words in data["message"], data["message"]
    return data


# ---------------------------------------------------------------- happy path
def test_translate_keeps_order_and_matches_the_translator(translator):
    texts = [SENTENCES[2], "", SENTENCES[0], SENTENCES[7]]
    expected = translator.translate(texts)

    async def main():
        async with api(translator) as client:
            r = await client.post("/v1/translate", json={"texts": texts})
            assert r.status_code == 200, r.text
            return r.json()

    out = run(main())["translations"]
    assert [t["text"] for t in out] == [e.text for e in expected]
    assert out[1] == {"text": "", "score": 0.0}
    for t, e in zip(out, expected):
        assert t["score"] == pytest.approx(e.score, rel=1e-5, abs=1e-4)
        assert set(t) == {"text", "score"}  # nbest and alignment only when asked


def test_nbest_alignment_and_search_options(translator):
    async def main():
        async with api(translator) as client:
            nbest = (await client.post("/v1/translate", json={"texts": [SENTENCES[1]], "beam": 4, "nbest": 3})).json()
            aligned = (await client.post("/v1/translate", json={"texts": [SENTENCES[0], SENTENCES[3]], "alignment": True})).json()
            greedy = (await client.post("/v1/translate", json={"texts": [SENTENCES[4]], "beam": 1, "length_penalty": 0})).json()
            short = (await client.post("/v1/translate", json={"texts": [SENTENCES[3]], "max_length": 3})).json()
            once = (await client.post("/v1/translate", json={"texts": SENTENCES[:4], "no_repeat_ngram": 1})).json()
            return nbest, aligned, greedy, short, once

    nbest, aligned, greedy, short, once = run(main())
    hyps = nbest["translations"][0]["nbest"]
    assert len(hyps) == 3 and hyps[0]["text"] == nbest["translations"][0]["text"]
    assert [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)
    for t in aligned["translations"]:
        assert len(t["alignment"]) == len(t["target_tokens"]) > 0
        assert [j for _, j in t["alignment"]] == list(range(len(t["target_tokens"])))
        assert all(0 <= i < len(t["source_tokens"]) for i, _ in t["alignment"])
    t = copy.copy(translator)
    t.options = SearchOptions(beam=1, alpha=0.0)
    assert greedy["translations"][0]["text"] == t.translate([SENTENCES[4]])[0].text
    # max_length counts output subwords with the end of sentence: at most 3 - 1 = 2 subwords of text
    assert len(translator.tgt_tok.encode([short["translations"][0]["text"]])[0]) <= 2
    # no_repeat_ngram: the translator's search with the same ban (no subword twice at N = 1)
    t.options = replace(translator.options, no_repeat_ngram=1)
    banned = t.translate(SENTENCES[:4])
    assert [x["text"] for x in once["translations"]] == [b.text for b in banned]
    assert all(len(set(b.tokens)) == len(b.tokens) for b in banned)
    assert [b.text for b in banned] != [u.text for u in translator.translate(SENTENCES[:4])]  # the ban changed something


def test_models_health_docs_and_page(translator):
    async def main():
        async with api(translator) as client:
            return [
                await client.get(p) for p in ("/v1/models", "/health", "/openapi.json", "/docs", "/", "/static/app.js", "/static/style.css")
            ]

    models, health, openapi, docs, page, js, css = run(main())
    model = models.json()["models"][0]
    cfg = translator.models[0].config
    assert model["parameters"] == translator.models[0].num_parameters() > 0
    assert model["config"]["d_model"] == cfg.d_model and model["config"]["heads"] == cfg.n_heads
    assert model["config"]["encoder_layers"] == cfg.n_encoder_layers and model["config"]["tgt_vocab_size"] == cfg.tgt_vocab_size
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["queue_depth"] == 0
    paths = openapi.json()["paths"]
    assert {"/v1/translate", "/v1/attention", "/v1/models", "/health"} <= set(paths)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    for element in ('id="source"', 'id="translate"', 'id="beam"', 'id="translation"', 'id="heatmap"', 'id="layer"', 'id="head"'):
        assert element in page.text
    assert js.status_code == 200 and "/v1/attention" in js.text
    assert css.status_code == 200


def test_attention_endpoint_is_the_data_of_aiayn_attention(translator):
    from aiayn.heatmaps import attention_maps

    async def main():
        async with api(translator, max_attention_tokens=30) as client:
            ok = await client.post("/v1/attention", json={"text": SENTENCES[1], "beam": 4})
            both = await client.post("/v1/attention", json={"text": SENTENCES[7], "encoder": True})
            long = await client.post("/v1/attention", json={"text": " ".join(SENTENCES)})
            empty = await client.post("/v1/attention", json={"text": ""})
            banned = await client.post("/v1/attention", json={"text": SENTENCES[1], "no_repeat_ngram": 1})
            return ok, both, long, empty, banned

    ok, both, long, empty, banned = run(main())
    data = ok.json()
    want = attention_maps(translator, SENTENCES[1]).to_dict()
    assert data["source"] == want["source"] and data["target"] == want["target"] and data["translation"] == want["translation"]
    assert "encoder" not in data
    cfg = translator.models[0].config
    assert len(data["cross"]) == cfg.n_decoder_layers and len(data["cross"][0]) == cfg.n_heads
    assert len(data["cross"][0][0]) == len(data["target"]) and len(data["cross"][0][0][0]) == len(data["source"])
    assert data["cross"][-1][0][0] == pytest.approx(want["cross"][-1][0][0], abs=1e-4)
    assert all(sum(row) == pytest.approx(1.0, abs=1e-2) for row in data["cross"][0][0])
    assert len(both.json()["encoder"]) == cfg.n_encoder_layers
    assert_error(long, 413, "limited to 30")
    assert_error(empty, 422)
    own = copy.copy(translator)
    own.options = replace(translator.options, no_repeat_ngram=1)
    banned_target = banned.json()["target"]
    assert banned_target == attention_maps(own, SENTENCES[1]).to_dict()["target"]
    assert len(set(banned_target)) == len(banned_target)  # no subword twice


# ---------------------------------------------------------------- limits and validation
def test_limits_answer_413_with_a_clear_message(translator):
    async def main():
        async with api(translator, max_texts=4, max_chars=50, max_body_bytes=2000) as client:
            many = await client.post("/v1/translate", json={"texts": ["a"] * 5})
            long = await client.post("/v1/translate", json={"texts": ["ok", "x" * 51]})
            body = await client.post("/v1/translate", json={"texts": ["y" * 3000]})
            body_attention = await client.post("/v1/attention", json={"text": "y" * 3000})
            long_attention = await client.post("/v1/attention", json={"text": "y" * 51})
            at_limit = await client.post("/v1/translate", json={"texts": ["And God said"] * 3 + ["a" * 50]})
            return many, long, body, body_attention, long_attention, at_limit

    many, long, body, body_attention, long_attention, at_limit = run(main())
    assert_error(many, 413, "5 texts in one request; the limit is 4")
    assert_error(long, 413, "text 1 has 51 characters; the limit is 50")
    assert_error(body, 413, "larger than the limit of 2000 bytes")
    assert_error(body_attention, 413, "2000 bytes")
    assert_error(long_attention, 413, "51 characters")
    assert at_limit.status_code == 200 and len(at_limit.json()["translations"]) == 4


SCHEMA_ERRORS = [
    ({}, "texts"),
    ({"text": ["a"]}, "texts"),
    ({"texts": "a sentence"}, "texts"),
    ({"texts": [1, 2]}, "texts"),
    ({"texts": ["a", None]}, "texts"),
    ({"texts": []}, "texts"),
    ({"texts": ["a"], "beam": 0}, "beam"),
    ({"texts": ["a"], "beam": 17}, "beam"),
    ({"texts": ["a"], "beam": "4"}, "beam"),
    ({"texts": ["a"], "beam": 2.5}, "beam"),
    ({"texts": ["a"], "beam": 10**30}, "beam"),
    ({"texts": ["a"], "nbest": 5, "beam": 4}, "nbest"),
    ({"texts": ["a"], "max_length": -1}, "max_length"),
    ({"texts": ["a"], "max_length": 0}, "max_length"),
    ({"texts": ["a"], "length_penalty": -0.5}, "length_penalty"),
    ({"texts": ["a"], "no_repeat_ngram": -1}, "no_repeat_ngram"),
    ({"texts": ["a"], "no_repeat_ngram": 17}, "no_repeat_ngram"),
    ({"texts": ["a"], "alignment": "yes"}, "alignment"),
    ({"texts": ["a"], "beam_size": 4}, "beam_size"),
    (["a", "b"], "body"),
    ("a string", "body"),
]


@pytest.mark.parametrize("body,field", SCHEMA_ERRORS, ids=[json.dumps(b)[:40] for b, _ in SCHEMA_ERRORS])
def test_schema_errors_answer_422(translator, body, field):
    async def main():
        async with api(translator) as client:
            return await client.post("/v1/translate", json=body)

    data = assert_error(run(main()), 422)
    assert field in data["message"] or any(field in d["loc"] for d in data["details"]), data
    assert all(set(d) == {"loc", "msg", "type"} for d in data["details"])  # the input is never echoed


def test_hostile_input_never_crashes_nor_leaks(translator):
    deep = b"[" * 60000 + b"]" * 60000
    hostile = [
        ("invalid JSON", b'{"texts": ["unfinished', "application/json", {422}),
        ("deep nesting", deep, "application/json", {400, 422}),
        ("deep nesting in texts", b'{"texts": ' + deep + b"}", "application/json", {400, 422}),
        ("binary garbage", bytes(range(256)) * 16, "application/json", {400, 422}),
        ("binary as octet-stream", os.urandom(4096), "application/octet-stream", {422}),
        ("JSON as text/plain", b'{"texts": ["a"]}', "text/plain", {422}),
        ("empty body", b"", "application/json", {422}),
        ("NaN", b'{"texts": ["a"], "length_penalty": NaN}', "application/json", {422}),
        ("infinite number", b'{"texts": ["a"], "length_penalty": 1e999}', "application/json", {422}),
        ("lone surrogate", b'{"texts": ["bad \\ud800 text"]}', "application/json", {422}),
        ("many tiny texts", json.dumps({"texts": [""] * 100000}).encode(), "application/json", {413}),
    ]

    async def main():
        async with api(translator) as client:
            answers = []
            for name, body, ctype, status in hostile:
                r = await client.post("/v1/translate", content=body, headers={"content-type": ctype})
                answers.append((name, r, status))
            answers.append(("unknown path", await client.get("/v1/nothing"), {404}))
            answers.append(("wrong method", await client.get("/v1/translate"), {405}))
            answers.append(
                ("bad Content-Length", await client.post("/v1/translate", content=b"{}", headers={"content-length": "-5"}), {400})
            )
            weird = await client.post(
                "/v1/translate", json={"texts": ["\u0000\u0001 nul and control", "🙂 " * 100, "\u202e right-to-left", " "]}
            )
            after = await client.post("/v1/translate", json={"texts": [SENTENCES[0]]})
            health = await client.get("/health")
            return answers, weird, after, health

    answers, weird, after, health = run(main())
    for name, r, status in answers:
        assert r.status_code in status, (name, r.status_code, r.text[:200])
        assert_error(r, r.status_code)
    assert weird.status_code == 200 and len(weird.json()["translations"]) == 4
    assert after.status_code == 200 and after.json()["translations"][0]["text"]
    assert health.json()["status"] == "ok"


# ---------------------------------------------------------------- timeouts and concurrency
def slow(translator, seconds: float):
    """A translator whose every decode first sleeps (the model thread is busy)."""
    slowed = copy.copy(translator)
    original = translator.translate

    def translate(texts, alignment_layer=None, stop=None):
        time.sleep(seconds)
        return original(texts, alignment_layer=alignment_layer, stop=stop)

    slowed.translate = translate
    return slowed


def test_timeout_answers_504_and_the_server_goes_on(translator):
    async def main():
        async with api(slow(translator, 0.6), timeout=0.3) as client:
            late = await client.post("/v1/translate", json={"texts": [SENTENCES[0]]})
            health = await client.get("/health")
            return late, health, client.app

    late, health, app = run(main())
    assert_error(late, 504, "took longer than the limit of 0.3 s")
    assert health.status_code == 200

    async def again():
        async with api(slow(translator, 0.05), timeout=5) as client:
            return await client.post("/v1/translate", json={"texts": [SENTENCES[0]]})

    assert run(again()).status_code == 200


def test_a_batch_whose_callers_all_left_stops_decoding(translator, monkeypatch):
    """When every caller of a batch has timed out, its search stops at the next step instead of
    running on to the length cap, and the model thread is free again."""
    steps = []
    step = translator.model.step

    def slow_step(*args, **kw):
        steps.append(None)
        time.sleep(0.05)
        return step(*args, **kw)

    monkeypatch.setattr(translator.model, "step", slow_step)
    to_the_cap = copy.copy(translator)
    to_the_cap.options = replace(translator.options, min_len=400)  # no EOS before 400 tokens: 20 s of steps

    async def main():
        async with api(to_the_cap, timeout=0.3) as client:
            late = await client.post("/v1/translate", json={"texts": [SENTENCES[0]], "beam": 1, "max_length": 400})
            batcher = client.app.state.batcher
            await until(lambda: batcher.stats()["cancelled_batches"] == 1 and not batcher.stats()["busy"])
            return late, len(steps), batcher.stats()

    late, steps_taken, stats = run(main())
    assert_error(late, 504)
    assert steps_taken < 100, steps_taken  # ~0.3 s / 0.05 s per step, not the 400 of the cap
    assert stats["batches"] == 0 and stats["queue_depth"] == 0


def test_model_failures_overload_and_shutdown_answer_cleanly(translator):
    broken = copy.copy(translator)

    def fail(texts, alignment_layer=None, stop=None):
        raise RuntimeError("secret internal detail")

    broken.translate = fail

    async def failing():
        async with api(broken) as client:
            return await client.post("/v1/translate", json={"texts": ["a"]}), await client.get("/health")

    failed, health = run(failing())
    assert_error(failed, 500, "translation failed")
    assert "secret" not in failed.text and health.json()["status"] == "ok"

    async def overloaded():
        async with api(slow(translator, 0.3), max_queue=1, max_batch_texts=1) as client:
            batcher = client.app.state.batcher
            first = asyncio.ensure_future(client.post("/v1/translate", json={"texts": ["one"]}))
            await until(lambda: batcher.stats()["busy"])  # "one" is decoding
            second = asyncio.ensure_future(client.post("/v1/translate", json={"texts": ["two"]}))
            await until(lambda: batcher.queue_depth == 1)  # "two" waits: the queue is full
            third = await client.post("/v1/translate", json={"texts": ["three"]})
            answers = [third, await first, await second]
            await client.app.state.batcher.close()  # as on shutdown
            answers += [await client.get("/health"), await client.post("/v1/translate", json={"texts": ["late"]})]
            return answers

    third, first, second, health, late = run(overloaded())
    assert_error(third, 503, "overloaded")
    assert third.headers["retry-after"] == "1"
    assert first.status_code == second.status_code == 200
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"
    assert_error(late, 503, "shutting down")


def test_concurrent_requests_are_batched_and_all_answered_correctly(translator):
    requests = [
        {"texts": [SENTENCES[i % 8]] + ([SENTENCES[(i + 3) % 8]] if i % 3 == 0 else []), "beam": 4 if i % 4 else 2} for i in range(32)
    ]

    async def main():
        async with api(translator, max_wait_ms=20) as client:
            alone = [(await client.post("/v1/translate", json=r)).json() for r in requests[:8]]
            batcher = client.app.state.batcher
            batcher.batches.clear()
            answers = await asyncio.gather(*(client.post("/v1/translate", json=r) for r in requests))
            return alone, answers, list(batcher.batches)

    alone, answers, batches = run(main())
    assert all(a.status_code == 200 for a in answers)
    for i, answer in enumerate(answers):
        got = answer.json()["translations"]
        assert len(got) == len(requests[i]["texts"])
        if i < 8:  # the same request alone
            assert [t["text"] for t in got] == [t["text"] for t in alone[i]["translations"]]
            assert [t["score"] for t in got] == pytest.approx([t["score"] for t in alone[i]["translations"]], rel=1e-4, abs=1e-3)
    by_key = {}  # requests with equal options and texts get equal answers, whatever batch they were in
    for r, answer in zip(requests, answers):
        by_key.setdefault(json.dumps(r), set()).add(json.dumps([t["text"] for t in answer.json()["translations"]]))
    assert all(len(v) == 1 for v in by_key.values())
    assert sum(b.requests for b in batches) == 32
    assert max(b.requests for b in batches) > 1, [b.requests for b in batches]
    assert {b.key.beam for b in batches} == {2, 4}


# ---------------------------------------------------------------- the batcher on its own
class FakeTokenizer:
    def encode(self, texts):
        return [[5] * len(t.split()) for t in texts]


class FakeTranslator:
    """Stands in for Translator: records each decode call (texts, beam, nbest, alignment)."""

    def __init__(self, delay: float = 0.0):
        self.src_tok, self.max_input_len, self.options = FakeTokenizer(), 100, SearchOptions()
        self.calls, self.delay = [], delay

    def translate(self, texts, alignment_layer=None, stop=None):
        self.calls.append((list(texts), self.options.beam, self.options.nbest, alignment_layer))
        time.sleep(self.delay)
        return [Translation(f"{t} @{self.options.beam}", -float(len(t))) for t in texts]


def test_batcher_groups_only_compatible_requests_and_respects_its_limits():
    fake = FakeTranslator(delay=0.05)

    async def main():
        batcher = Batcher(fake, max_batch_tokens=4 * 12, max_batch_texts=5, max_wait_ms=30)
        await batcher.start()
        keys = [
            DecodeKey(beam=4),
            DecodeKey(beam=2),
            DecodeKey(beam=4, nbest=2),
            DecodeKey(beam=4, alpha=1.0),
            DecodeKey(beam=4, max_length=9),
        ]
        jobs = [(f"s{i} " + "w " * (i % 3), keys[i % len(keys)], i % 7 == 0) for i in range(40)]
        results = await asyncio.gather(*(batcher.translate([text], key, align) for text, key, align in jobs))
        await batcher.close()
        return jobs, results, list(batcher.batches)

    jobs, results, batches = run(main())
    for (text, key, _), result in zip(jobs, results):
        assert [r.text for r in result] == [f"{text} @{key.beam}"]
    for texts, _beam, _nbest, _ in fake.calls:
        assert len(texts) <= 5
        owners = {next(k for t, k, _ in jobs if t == text) for text in texts}
        assert len(owners) == 1  # one set of search options per decode call
    assert all(b.tokens <= 4 * 12 or b.requests == 1 for b in batches)
    assert max(b.requests for b in batches) > 1


def test_batcher_off_with_max_batch_texts_1_drops_abandoned_requests_and_drains_on_close():
    fake = FakeTranslator(delay=0.05)

    async def main():
        batcher = Batcher(fake, max_batch_texts=1, max_wait_ms=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.translate(["one"]))
        await until(lambda: batcher.stats()["busy"])  # the model is now busy with "one"
        abandoned = asyncio.ensure_future(batcher.translate(["abandoned"]))
        queued = [asyncio.ensure_future(batcher.translate([f"q{i}"])) for i in range(3)]
        await asyncio.sleep(0)
        abandoned.cancel()  # its caller timed out or disconnected
        assert batcher.queue_depth == 3
        await batcher.close()  # decodes everything still waiting, then stops
        with pytest.raises(RuntimeError):
            await batcher.translate(["late"])
        return await first, [await q for q in queued]

    first, queued = run(main())
    assert first[0].text == "one @4" and [q[0].text for q in queued] == ["q0 @4", "q1 @4", "q2 @4"]
    assert [c[0] for c in fake.calls] == [["one"], ["q0"], ["q1"], ["q2"]]


# ---------------------------------------------------------------- a real server
def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (it does after these errors)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_live_server_streamed_bodies_slow_clients_garbage_and_concurrency(translator):
    app = create_app(translator, ServeSettings(max_body_bytes=1000, timeout=2))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        # a chunked body (no Content-Length) is counted as it streams in
        chunks = (b'{"texts": ["' + b"a" * 500, b"a" * 500, b"a" * 500 + b'"]}')
        assert_error(client.post("/v1/translate", content=iter(chunks), headers={"content-type": "application/json"}), 413)
        # a client that promises more body than it sends is answered 408, not waited for forever
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            reply = read_until_closed(s).decode("latin-1")
            assert reply.startswith("HTTP/1.1 408") and "did not arrive" in reply and "Traceback" not in reply
        # bytes that are not HTTP at all
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(bytes(range(256)) + b"\r\n\r\n")
            reply = read_until_closed(s)
            assert reply.startswith(b"HTTP/1.1 400") and b"Traceback" not in reply

        async def concurrent():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/v1/translate", json={"texts": [SENTENCES[i % 8]]}) for i in range(16)))

        answers = run(concurrent())
        expected = {s: t.text for s, t in zip(SENTENCES, translator.translate(SENTENCES))}
        assert [a.json()["translations"][0]["text"] for a in answers] == [expected[SENTENCES[i % 8]] for i in range(16)]
        assert client.get("/health").json()["status"] == "ok"


def test_graceful_shutdown_finishes_in_flight_requests(translator):
    app = create_app(slow(translator, 0.5), ServeSettings(max_batch_texts=1, timeout=20))
    server = LiveServer(app).start()
    answers = {}

    def ask(i):
        answers[i] = httpx.post(f"{server.url}/v1/translate", json={"texts": [SENTENCES[i]]}, timeout=30)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    batcher, deadline = app.state.batcher, time.monotonic() + 10
    while not (batcher.stats()["busy"] and batcher.queue_depth == 2):  # all three are in: one decoding, two queued
        assert time.monotonic() < deadline, batcher.stats()
        time.sleep(0.005)
    assert batcher.counts["requests"] == 0
    server.stop()  # what SIGTERM does: stop accepting, let in-flight requests finish, drain the batcher
    for t in threads:
        t.join(30)
    assert not server.thread.is_alive() and batcher.counts["requests"] == 3
    expected = translator.translate(SENTENCES[:3])
    assert [answers[i].status_code for i in range(3)] == [200, 200, 200]
    assert [answers[i].json()["translations"][0]["text"] for i in range(3)] == [e.text for e in expected]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)


# ---------------------------------------------------------------- the command line
def test_cli_serve_reports_a_bad_model_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "aiayn", "serve", "--model", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no checkpoint" in result.stderr and "Traceback" not in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "aiayn", "serve", "--model", "x", "--max-texts", "0"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "argument --max-texts: expected ≥ 1, got '0'" in bad.stderr and "Traceback" not in bad.stderr
    with pytest.raises(ValueError, match="max_texts must be positive"):  # the settings check it too (Python callers)
        ServeSettings(max_texts=0)


@pytest.mark.slow
def test_cli_serve_runs_and_stops_gracefully_on_sigterm(trained_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiayn", "serve", "--model", str(trained_run), "--port", str(port), "--max-wait-ms", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/translate", json={"texts": [SENTENCES[0], SENTENCES[1]]}, timeout=60)
        assert r.status_code == 200 and len(r.json()["translations"]) == 2
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in stderr and "Traceback" not in stderr


def test_gone_clients_heavy_requests_do_not_hold_up_a_light_one(translator, monkeypatch):
    """Five heavy requests whose clients close their connections (some while queued, some while
    their batch decodes) are dropped: a one-word request is answered within 2 s, not after the
    30 s timeout, and the heavy batch stops decoding."""
    import torch

    step = translator.model.step
    eos = translator.model.config.eos_id

    def slow_unless_alone(tokens, state, *args, **kw):  # a heavy batch: never ends, 50 ms a step
        logits = step(tokens, state, *args, **kw)
        if tokens.size(0) > 1:
            time.sleep(0.05)
            logits = logits.clone()
            logits[:, eos] = -torch.inf
        return logits

    monkeypatch.setattr(translator.model, "step", slow_unless_alone)
    app = create_app(translator, ServeSettings(timeout=30))
    heavy = json.dumps({"texts": SENTENCES[:4], "beam": 1, "max_length": 400}).encode()
    with LiveServer(app) as server:
        sockets = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(
                b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(heavy), heavy)
            )
            sockets.append(s)
        deadline = time.monotonic() + 10
        while not httpx.get(f"{server.url}/health").json()["busy"]:  # the first heavy batch is decoding
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for s in sockets:
            s.close()
        started = time.monotonic()
        light = httpx.post(f"{server.url}/v1/translate", json={"texts": ["God"], "beam": 1}, timeout=30)
        waited = time.monotonic() - started
        health = httpx.get(f"{server.url}/health").json()
    assert light.status_code == 200 and waited < 2.0, (light.status_code, waited)
    assert health["cancelled_batches"] >= 1 and health["queue_depth"] == 0, health


def test_a_request_over_the_cost_limit_is_refused(translator):
    async def main():
        async with api(translator, max_request_cost=1000) as client:
            over = await client.post("/v1/translate", json={"texts": SENTENCES[:4], "beam": 16, "max_length": 100})
            under = await client.post("/v1/translate", json={"texts": SENTENCES[:1], "beam": 2, "max_length": 100})
            return over, under

    over, under = run(main())
    assert_error(over, 413, "may cost 6400 beam × output steps")
    assert under.status_code == 200


def _from_schema(schema: dict, components: dict):
    """A hypothesis strategy for values of an OpenAPI property, reaching past its bounds on purpose."""
    from hypothesis import strategies as st

    if "$ref" in schema:
        return _from_schema(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    if "anyOf" in schema:
        return st.one_of(*(_from_schema(s, components) for s in schema["anyOf"]))
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(int(schema.get("minimum", 0)) - 3, int(schema.get("maximum", 100)) + 3)
    if kind == "number":
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {}), components), max_size=3)
    if kind == "null":
        return st.none()
    return st.one_of(st.none(), st.integers(), st.text(max_size=5))


def test_the_translate_endpoint_survives_requests_drawn_from_its_own_schema(translator):
    """Property-based, over the app's own OpenAPI schema (schemathesis' idea, done with hypothesis):
    requests with every documented field, in and out of its bounds, plus unknown fields and JSON of
    other shapes, are answered with 200 or a clean 4xx, never a 5xx or a traceback."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    app = create_app(translator, ServeSettings())
    spec = app.openapi()
    components = spec["components"]["schemas"]
    body = spec["paths"]["/v1/translate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = _from_schema(body, components) if "properties" in body else components[body["$ref"].rsplit("/", 1)[-1]]
    props = fields["properties"]
    requests = st.one_of(
        st.fixed_dictionaries({}, optional={name: _from_schema(s, components) for name, s in props.items()}),
        st.fixed_dictionaries({"texts": st.lists(st.text(max_size=30), min_size=1, max_size=3)}, optional={"bogus": st.integers()}),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=3), max_leaves=5),
    )
    answers = []

    @settings(
        max_examples=int(os.environ.get("AIAYN_FUZZ_EXAMPLES", 80)),
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests)
    def check(payload):
        async def post():
            async with api(translator) as client:
                return await client.post(
                    "/v1/translate", content=json.dumps(payload, allow_nan=True), headers={"content-type": "application/json"}
                )

        r = run(post())
        answers.append(r.status_code)
        assert r.status_code == 200 or 400 <= r.status_code < 500, (payload, r.status_code, r.text)
        if r.status_code != 200:
            assert_error(r, r.status_code)

    check()
    assert 200 in answers and 422 in answers  # both kinds were reached


def test_serve_decodes_in_int8_when_asked(trained_run):
    int8 = load_translator(trained_run, device="cpu", precision="int8")

    async def main():
        async with api(int8) as client:
            return await client.get("/v1/models"), await client.post("/v1/translate", json={"texts": SENTENCES[:2], "beam": 4})

    models, out = run(main())
    assert int8.precision == "int8" and models.json()["models"][0]["precision"] == "int8"
    assert [t["text"] for t in out.json()["translations"]] == [t.text for t in int8.translate(SENTENCES[:2])]
