"""`aiayn serve` under hostile clients: do well-behaved clients keep their latency, and does the
server's memory stay bounded?

One real server (`python -m aiayn serve`, default settings, --timeout 30) on loopback. Three phases
of --seconds each, the same well-behaved clients throughout (--clients, one-sentence requests,
beam 4, back to back):
  calm       the well-behaved clients alone;
  hostile    the same, plus --disconnectors clients that send heavy requests (--heavy-texts long
             verses, beam 16, max_length 200) over raw sockets and close the connection after
             --hang-up-ms, again and again, and --heavy clients that send such requests and wait
             for their answers;
  after      the well-behaved clients alone again.
Reported: the well-behaved clients' requests/s and p50/p95/p99 latency per phase, the hostile
phase's p95 over the calm one's, the latency of one-word probe requests sent during the hostile
phase (goal: each answered within 2 s), errors among the well-behaved requests (goal 0), and the
server's resident memory (VmRSS) after warm-up, at its highest, and after the load (goal: within
1.5× of the warm-up figure).

Run (from the repository root):

    .venv/bin/python benchmarks/serve_hostile.py                 # 20 s per phase, ~2 minutes
    .venv/bin/python benchmarks/serve_hostile.py --seconds 5     # quick

Client and server share this machine's cores. Results: a table on stdout and JSON in
benchmarks/results/serve_hostile.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, Server, load, load_sentences, log, tiny_model  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def disconnector(port: int, body: bytes, hang_up: float, stop_at: float, counts: dict) -> None:
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            await asyncio.sleep(hang_up)
            writer.close()
            counts["disconnected"] += 1
        except OSError:
            counts["refused"] += 1
            await asyncio.sleep(0.05)


async def heavy_client(url: str, payload: dict, stop_at: float, counts: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            try:
                r = await client.post("/v1/translate", json=payload)
                counts[f"heavy_{r.status_code}"] += 1
            except httpx.HTTPError:
                counts["heavy_error"] += 1


async def probes(url: str, stop_at: float, every: float) -> list[float]:
    waited = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.sleep(every)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            r = await client.post("/v1/translate", json={"texts": ["God"], "beam": 1})
            waited.append(round((time.perf_counter() - t0) * 1000, 1) if r.status_code == 200 else float("inf"))
            await asyncio.sleep(every)
    return waited


async def hostile_phase(server: Server, sentences: list[str], args, rss: list) -> tuple[dict, dict]:
    stop_at = time.monotonic() + args.seconds
    heavy = {"texts": sentences[: args.heavy_texts], "beam": 16, "max_length": 200}
    body = json.dumps(heavy).encode()
    counts = collections.Counter(disconnected=0, refused=0)

    async def sample_rss():
        while time.monotonic() < stop_at:
            rss.append(rss_mib(server.proc.pid))
            await asyncio.sleep(0.5)

    hostile = [disconnector(server.port, body, args.hang_up_ms / 1000, stop_at, counts) for _ in range(args.disconnectors)]
    hostile += [heavy_client(server.url, heavy, stop_at, counts) for _ in range(args.heavy)]
    good, *_rest = await asyncio.gather(load(server.url, sentences, args.clients, args.seconds, 10**9, 4), *hostile, sample_rss())
    return good, dict(counts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="weights file or run directory (default: train a tiny one into --work)")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load_work")
    p.add_argument("--train-updates", type=int, default=150)
    p.add_argument("--clients", type=int, default=4, help="well-behaved clients (default 4)")
    p.add_argument("--disconnectors", type=int, default=8, help="clients that send heavy requests and hang up (default 8)")
    p.add_argument("--heavy", type=int, default=2, help="clients that send heavy requests and wait (default 2)")
    p.add_argument("--heavy-texts", type=int, default=16, help="texts per heavy request (default 16)")
    p.add_argument("--hang-up-ms", type=float, default=200.0, help="how long a disconnector waits before closing (default 200)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    p.add_argument("--probe-every", type=float, default=1.0, help="seconds between one-word probes in the hostile phase")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_hostile.json")
    args = p.parse_args()

    model = args.model or tiny_model(args.work, args.train_updates)
    sentences = [s for s in load_sentences(args.work, 400) if len(s) > 80]
    server = Server(model, ["--timeout", "30"], 5.0)
    try:
        server.wait_ready()
        for text in sentences[:8]:
            httpx.post(f"{server.url}/v1/translate", json={"texts": [text], "beam": 4}, timeout=120).raise_for_status()
        rss_warm = rss_mib(server.proc.pid)
        calm = asyncio.run(load(server.url, sentences, args.clients, args.seconds, 10**9, 4))
        log(f"calm: {calm['requests_per_s']} req/s, p95 {percentile(calm, 95)} ms")
        rss: list[float] = []

        async def hostile():
            stop_at = time.monotonic() + args.seconds
            probe = asyncio.ensure_future(probes(server.url, stop_at, args.probe_every))
            good, counts = await hostile_phase(server, sentences, args, rss)
            return good, counts, await probe

        during, counts, probe_ms = asyncio.run(hostile())
        log(f"hostile: {during['requests_per_s']} req/s, p95 {percentile(during, 95)} ms; probes {probe_ms}; {counts}")
        time.sleep(2)
        after = asyncio.run(load(server.url, sentences, args.clients, args.seconds, 10**9, 4))
        time.sleep(2)
        rss_after = rss_mib(server.proc.pid)
        health = httpx.get(f"{server.url}/health", timeout=10).json()
    finally:
        server.stop()

    rows = [("calm", calm), ("hostile", during), ("after", after)]
    print(f"\n{'phase':8s} {'req/s':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>6s}")
    for name, r in rows:
        print(f"{name:8s} {r['requests_per_s']:7.2f} {percentile(r, 50):8.1f} {percentile(r, 95):8.1f} {r['p99_ms']:8.1f} {r['errors']:6d}")
    ratio = percentile(during, 95) / percentile(calm, 95)
    print(f"\nwell-behaved p95, hostile / calm: {ratio:.2f}")
    print(f"one-word probes during the hostile phase (ms): {probe_ms}  (worst {max(probe_ms) if probe_ms else float('nan'):.0f})")
    print(f"hostile traffic: {counts}")
    print(
        f"server RSS: {rss_warm:.0f} MiB after warm-up, {max(rss or [rss_warm]):.0f} at most, {rss_after:.0f} after ({rss_after / rss_warm:.2f}×)"
    )
    print(f"server: cancelled_batches {health['cancelled_batches']}, batches {health['batches']}")
    from aiayn.runtime import machine

    result = {
        "argv": sys.argv,
        "machine": machine(),
        "phases": dict(rows),
        "p95_hostile_over_calm": round(ratio, 3),
        "probe_ms": probe_ms,
        "hostile_traffic": counts,
        "rss_mib": {"after_warmup": round(rss_warm, 1), "max": round(max(rss or [rss_warm]), 1), "after": round(rss_after, 1)},
        "health": health,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


def percentile(row: dict, p: int) -> float:
    return row[f"p{p}_ms"]


if __name__ == "__main__":
    main()
