"""CTranslate2 in a process of its own, for benchmarks that compare it with PyTorch code.

In one process with PyTorch, CTranslate2's OpenMP calls bind to PyTorch's libgomp (the one
loaded first, globally), so both share one OpenMP runtime. Once CTranslate2 has run, that runtime
manages more threads than there are CPUs and throttles its spin-waiting: PyTorch's worker threads
then sleep and are woken at every parallel region. On a 2-core AMD EPYC Zen 4, aiayn's int8 beam
search over 256 verses took 7.1–7.6 s in a process of its own and 11.0–12.4 s after CTranslate2 had
run in the same process (about 112,000 voluntary context switches a pass, against none), while
CTranslate2's own time did not change. A user runs one or the other, so each is timed in its own process.

The parent writes one JSON request per line on stdin and reads one JSON answer per line on stdout:
    {"load": {"name": [model_dir, compute_type], ...}, "threads": 2, "batches": [[[piece, ...], ...], ...]}
    {"run": "name", "options": {...translate_batch options...}}  ->  {"tokens": n, "hypotheses": [[piece, ...], ...]}
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


class CTranslate2Process:
    """A child process holding CTranslate2 translators; `run(name, **options)` translates the
    loaded batches with translate_batch(**options) and returns (output tokens, hypotheses)."""

    def __init__(self, models: dict[str, tuple[str, str]], batches: list[list[list[str]]], threads: int):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._ask(
            {"load": {name: [str(path), compute] for name, (path, compute) in models.items()}, "threads": threads, "batches": batches}
        )

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the CTranslate2 worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def run(self, name: str, **options) -> tuple[int, list[list[str]]]:
        answer = self._ask({"run": name, "options": options})
        return answer["tokens"], answer["hypotheses"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def serve() -> None:
    import ctranslate2

    translators, batches = {}, []
    for line in sys.stdin:
        request = json.loads(line)
        if "load" in request:
            threads = request["threads"]
            translators = {
                name: ctranslate2.Translator(path, device="cpu", compute_type=compute, intra_threads=threads, inter_threads=1)
                for name, (path, compute) in request["load"].items()
            }
            batches = request["batches"]
            answer = {"loaded": sorted(translators)}
        else:
            hypotheses = []
            for batch in batches:
                hypotheses += [r.hypotheses[0] for r in translators[request["run"]].translate_batch(batch, **request["options"])]
            answer = {"tokens": sum(len(h) for h in hypotheses), "hypotheses": hypotheses}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
