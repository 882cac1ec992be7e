"""Load test of `aiayn serve` on loopback: what dynamic batching buys under concurrent clients.

Two real servers are started as subprocesses (`python -m aiayn serve`), one per mode:
  batching   the defaults: concurrent requests are decoded together
             (--max-batch-texts 128, --max-wait-ms as given, default 5)
  batch-1    --max-batch-texts 1: every request is decoded on its own (batching off)
and for each number of concurrent clients (default 1, 8, 32), the two modes taking turns, every
client sends one-sentence requests (`POST /v1/translate`, beam 4 unless --beam) back to back,
each picking the next verse of the shipped test split, until --seconds have passed or
--max-requests have been sent for that level. Reported per mode and level: requests/s, p50/p99 latency, errors (any non-200 answer or
transport error; must be 0), mean requests per decoded batch (from /health), and for each
level the gain of batching: its requests/s over batch-1's.

Model: --model (a weights file or a run directory); without it a tiny model (d_model 96, 2+2
layers, as the tests use) is trained once on 2,000 shipped verse pairs into --work (a few
minutes on a CPU) and reused by later runs.

Run (from the repository root):

    .venv/bin/python benchmarks/serve_load.py --model run/                      # 20 s per level
    .venv/bin/python benchmarks/serve_load.py --seconds 5 --max-requests 300    # quick
    .venv/bin/python benchmarks/serve_load.py --clients 1 4 16 64 --beam 1

Client and server share this machine's cores (the numbers are for loopback on one box).
Results: a table on stdout and JSON in benchmarks/results/serve_load.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODES = {
    "batching": [],
    "batch-1": ["--max-batch-texts", "1"],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- model and sentences
def tiny_model(work: Path, updates: int) -> Path:
    """A tiny trained run in work/run (trained once, then reused)."""
    from aiayn.io.checkpoint import list_checkpoints

    run = work / "run"
    if list_checkpoints(run):
        return run
    from aiayn.data import PrepareOptions, prepare
    from aiayn.data.shipped import write_shipped_corpus
    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    log(f"training a tiny model for {updates} updates into {run} (once; pass --model to use your own)")
    shipped = write_shipped_corpus(work / "corpus", limit={"train": 2000, "valid": 200, "test": 200})
    prepare(dict(shipped), work / "data", PrepareOptions(vocab_size=1000, workers=1, progress=False), force=True, log=lambda *a: None)
    cfg = TrainConfig.from_dict(
        {
            "model": {
                "preset": "tiny",
                "pre_norm": False,
                "d_model": 96,
                "d_ff": 256,
                "n_heads": 4,
                "n_encoder_layers": 2,
                "n_decoder_layers": 2,
            },
            "max_tokens": 1500,
            "lr_schedule": "inverse_sqrt",
            "lr": 0.004,
            "warmup_steps": 40,
            "max_updates": updates,
            "save_every": updates,
            "validate_every": 0,
            "valid_bleu": False,
            "log_every": 10**6,
            "threads": os.cpu_count() or 1,
        }
    )
    Trainer(cfg, work / "data", run, log=lambda *a: None, progress=False).train()
    return run


def load_sentences(work: Path, n: int) -> list[str]:
    from aiayn.data.shipped import write_shipped_corpus

    corpus = write_shipped_corpus(work / "corpus-test", limit={"train": 1, "valid": 1, "test": n})
    return [line for line in corpus["test"][0].read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, extra: list[str], max_wait_ms: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "aiayn",
            "serve",
            "--model",
            str(model),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--max-wait-ms",
            str(max_wait_ms),
            "--max-queue",
            "100000",
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- load
async def load(url: str, sentences: list[str], clients: int, seconds: float, max_requests: int, beam: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = (await client.get("/health")).json()
        started = time.perf_counter()
        stop_at = started + seconds

        async def one_client() -> None:
            nonlocal sent
            while time.perf_counter() < stop_at and sent < max_requests:
                text = sentences[sent % len(sentences)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/translate", json={"texts": [text], "beam": beam})
                    if r.status_code != 200 or len(r.json().get("translations", [])) != 1:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        after = (await client.get("/health")).json()
    batches = after["batches"] - before["batches"]
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000 if ordered else float("nan")

    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(pct(50), 1),
        "p95_ms": round(pct(95), 1),
        "p99_ms": round(pct(99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        "batches": batches,
        "requests_per_batch": round((after["requests"] - before["requests"]) / batches, 2) if batches else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="weights file or run directory (default: train a tiny one into --work)")
    p.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "aiayn-serve-load",
        help="where the default model and sentences go",
    )
    p.add_argument("--train-updates", type=int, default=150, help="updates for the default tiny model (default 150)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels (default 1 8 32)")
    p.add_argument("--seconds", type=float, default=20.0, help="time limit per mode and level (default 20)")
    p.add_argument("--max-requests", type=int, default=2000, help="request limit per mode and level (default 2000)")
    p.add_argument("--warmup", type=int, default=8, help="requests sent before measuring, per mode (default 8)")
    p.add_argument("--beam", type=int, default=4, help="beam size of every request (default 4)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the batching server's --max-wait-ms (default 5)")
    p.add_argument("--sentences", type=int, default=200, help="distinct test verses to cycle through (default 200)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = p.parse_args()

    import torch

    from aiayn.runtime import machine

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_model(args.work, args.train_updates)
    sentences = load_sentences(args.work, args.sentences)
    # Both servers run side by side (an idle one costs nothing) and the modes take turns at each
    # level, so that a change in the machine's load hits both alike.
    servers = {mode: Server(model, extra, args.max_wait_ms) for mode, extra in MODES.items()}
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        for server in servers.values():
            server.wait_ready()
            model_info = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"][0]
            for text in sentences[: args.warmup]:
                httpx.post(f"{server.url}/v1/translate", json={"texts": [text], "beam": args.beam}, timeout=120).raise_for_status()
        for clients in args.clients:
            for mode, server in servers.items():
                r = asyncio.run(load(server.url, sentences, clients, args.seconds, args.max_requests, args.beam))
                log(
                    f"{mode:9s} {clients:3d} clients: {r['requests_per_s']:7.2f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                    f"errors {r['errors']}  requests/batch {r['requests_per_batch']}"
                )
                results[mode].append(r)
    finally:
        for server in servers.values():
            server.stop()

    gains = {}
    print(f"\n{'mode':10s} {'clients':>7s} {'requests':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} {'req/batch':>9s}")
    for mode, rows in results.items():
        for r in rows:
            print(
                f"{mode:10s} {r['clients']:7d} {r['requests']:8d} {r['requests_per_s']:8.2f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['errors']:6d} {r['requests_per_batch'] or 0:9.2f}"
            )
    print()
    for on, off in zip(results["batching"], results["batch-1"]):
        gain = on["requests_per_s"] / off["requests_per_s"] if off["requests_per_s"] else float("nan")
        gains[str(on["clients"])] = round(gain, 2)
        print(f"gain of dynamic batching at {on['clients']:2d} clients: {gain:.2f}× requests/s")
    total_errors = sum(r["errors"] for rows in results.values() for r in rows)
    print(f"errors: {total_errors}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "what": "aiayn serve on loopback: one-sentence POST /v1/translate requests from N concurrent clients",
                "model": {k: model_info[k] for k in ("id", "parameters", "config", "device")},
                "beam": args.beam,
                "seconds_per_level": args.seconds,
                "max_requests_per_level": args.max_requests,
                "max_wait_ms": args.max_wait_ms,
                "modes": {m: " ".join(e) or "defaults" for m, e in MODES.items()},
                "results": results,
                "gain_of_batching": gains,
                "errors": total_errors,
                "machine": {**machine(torch.get_num_threads()), "cpus": os.cpu_count()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    if total_errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
