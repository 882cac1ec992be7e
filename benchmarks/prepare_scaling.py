"""Benchmark `aiayn prepare` (the data pipeline): throughput, peak memory and scaling with workers.

What it does
    1. Generates synthetic parallel corpora (no download) of each size in --sizes: pseudo-sentences of
       5-40 made-up words drawn from a Zipf-distributed vocabulary; the "translation" maps every word
       through a fixed bilingual dictionary and reverses the word order, so the pair is parallel.
       numpy with a fixed seed, vectorised, written in chunks; generation time is not measured.
    2. Runs `python -m aiayn prepare --train-src ... --train-tgt ... --vocab-size V --workers K` on each
       corpus in a separate subprocess, so every run starts from a fresh interpreter and its memory is
       its own. All sizes run with the largest --workers value; the scaling corpus (the largest size, or
       --scaling-size) additionally runs with every other --workers value.

What it measures, per run
    wall_s         wall time of the whole command (interpreter start to exit); pairs/s = pairs / wall_s.
    phases         split of wall_s, timed from the command's own output as it appears (PYTHONUNBUFFERED):
                   startup (imports, until the "read train" bar), read (validate + clean, serial),
                   spm (learn the sentencepiece vocabulary), encode (tokenise + binarize with the worker
                   pool, until the "train: N pairs kept" log line), finish (meta.json, rename, exit).
                   encode pairs/s = pairs / encode seconds.
    Memory, three figures, in MiB:
    main_peak      VmHWM of the prepare process itself (kernel's exact high-water mark, last read by the
                   poller, so growth in the final ~50 ms could be missed).
    max_proc_peak  the largest VmHWM (per-process high-water mark) of any process in the tree, polled.
                   Not ru_maxrss from wait4(): Linux carries the high-water mark of the image a process
                   exec'd from into it, and subprocess spawns through vfork, so ru_maxrss would count this
                   benchmark's own memory (which grows with the corpus it generates); it is kept in the
                   JSON as max_proc_ru_maxrss_mib for reference.
    tree_rss/pss   the largest sum over the whole process tree (prepare + encoding workers), sampled by
                   polling /proc/<pid>/status (VmRSS) and /proc/<pid>/smaps_rollup (Pss) every --poll-ms.
                   The workers are forked, so RSS counts the copy-on-write pages they share with the
                   parent once per process; PSS divides shared pages between their users and is the
                   honest total. Sampling can miss a peak shorter than the interval.

Goals checked (PASS/FAIL)
    bounded memory: peak of the largest size <= 1.5 x the peak of the smallest size (same workers), for
                    tree PSS (total memory) and for the max single-process peak;
    scaling:        whole-run pairs/s grows with every increase in --workers on the scaling corpus
                    (the encode-phase speedup is reported alongside; read and spm are not parallelised
                    by the worker pool, so the whole-run speedup is bounded by them).

Results are printed as a table and written to benchmarks/results/prepare_scaling.json with machine
information (cpu count, load average before each run, python/torch/sentencepiece/numpy versions) and the
exact command line. Timings are sensitive to other work on the machine: check the load averages.

Run (from the repository root)
    .venv/bin/python benchmarks/prepare_scaling.py                   # 100k and 1M pairs, workers 1,2
    .venv/bin/python benchmarks/prepare_scaling.py --quick           # 20k and 200k pairs: a smoke run
    .venv/bin/python benchmarks/prepare_scaling.py --sizes 100000,300000 --workers 1,2,4 --keep
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "prepare_scaling.json"
MIB = 1024 * 1024
MEMORY_GOAL = 1.5  # largest / smallest peak


# ---------------------------------------------------------------- synthetic corpus
def make_lexicon(n: int, rng: np.random.Generator, onsets: list[str], vowels: list[str]) -> np.ndarray:
    """n distinct made-up words of 1-4 syllables (onset + vowel, sometimes a final consonant)."""
    codas = ["", "", "", "n", "s", "r", "l"]
    words: dict[str, None] = {}  # insertion-ordered set, so the result depends only on the seed
    while len(words) < n:
        for syllables in rng.integers(1, 5, size=n):
            parts = [onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] for _ in range(syllables)]
            words[("".join(parts) + codas[rng.integers(len(codas))])] = None
            if len(words) == n:
                break
    return np.array(list(words), dtype=object)


def generate_corpus(n_pairs: int, directory: Path, vocab: int = 5000, seed: int = 1234, chunk: int = 100_000) -> tuple[Path, Path]:
    """Write directory/train.{src,tgt}: n_pairs parallel lines; returns the two paths."""
    rng = np.random.default_rng(seed)
    src_lex = make_lexicon(vocab, rng, list("bcdfgklmnprstvz") + ["st", "tr", "pl"], list("aeiou") + ["ou", "ai"])
    tgt_lex = make_lexicon(vocab, rng, list("bcdfgjlmnprstvñ") + ["ch", "ll", "qu"], list("aeiou") + ["á", "é", "ió"])
    cap = np.frompyfunc(str.capitalize, 1, 1)
    src_cap, tgt_cap = cap(src_lex), cap(tgt_lex)
    dictionary = rng.permutation(vocab)  # source word i translates to target word dictionary[i]
    ranks = np.arange(1, vocab + 1)
    cdf = np.cumsum(1.0 / (ranks + 2.7) ** 1.1)  # Zipf-Mandelbrot word frequencies
    cdf /= cdf[-1]

    src_path, tgt_path = directory / "train.src", directory / "train.tgt"
    with open(src_path, "w", encoding="utf-8") as fs, open(tgt_path, "w", encoding="utf-8") as ft:
        for done in range(0, n_pairs, chunk):
            m = min(chunk, n_pairs - done)
            lengths = rng.integers(5, 41, size=m)
            ends = np.cumsum(lengths)
            starts = ends - lengths
            src_ids = np.minimum(np.searchsorted(cdf, rng.random(int(ends[-1]))), vocab - 1)
            # the target reverses each sentence: token j of sentence s comes from source token 2·start+len-1-j
            sent = np.repeat(np.arange(m), lengths)
            reverse = 2 * starts[sent] + lengths[sent] - 1 - np.arange(int(ends[-1]))
            tgt_ids = dictionary[src_ids[reverse]]
            for lex, lex_cap, ids, f in ((src_lex, src_cap, src_ids, fs), (tgt_lex, tgt_cap, tgt_ids, ft)):
                words = lex[ids]
                words[starts] = lex_cap[ids[starts]]  # sentence-initial capital
                words = words.tolist()
                f.write("\n".join(" ".join(words[a:b]) + " ." for a, b in zip(starts.tolist(), ends.tolist())))
                f.write("\n")
    return src_path, tgt_path


# ---------------------------------------------------------------- process-tree memory sampling
def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/*/stat (this kernel has no /proc/<pid>/task/<tid>/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])  # fields after "(comm)": state ppid ...
        children.setdefault(ppid, []).append(int(entry))
    return children


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in keys:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Polls the memory of a process and all its descendants until stopped."""

    def __init__(self, root_pid: int, interval_s: float):
        super().__init__(daemon=True)
        self.root_pid, self.interval_s = root_pid, interval_s
        self.stopped = threading.Event()
        self.phase = "startup"  # set by the output reader; peaks are also kept per phase
        self.phase_peaks: dict[str, dict[str, int]] = {}
        self.main_hwm_kib = self.proc_hwm_kib = self.tree_rss_kib = self.tree_pss_kib = self.max_procs = self.samples = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval_s)

    def sample(self) -> None:
        children, tree, i = _children_map(), [self.root_pid], 0
        while i < len(tree):
            tree += children.get(tree[i], [])
            i += 1
        rss = pss = main_rss = 0
        for pid in tree:
            status = _status_kib(pid, ("VmRSS", "VmHWM"))
            rss += status.get("VmRSS", 0)
            pss += _pss_kib(pid)
            self.proc_hwm_kib = max(self.proc_hwm_kib, status.get("VmHWM", 0))
            if pid == self.root_pid:
                main_rss = status.get("VmRSS", 0)
                self.main_hwm_kib = max(self.main_hwm_kib, status.get("VmHWM", 0))
        self.tree_rss_kib, self.tree_pss_kib = max(self.tree_rss_kib, rss), max(self.tree_pss_kib, pss)
        peaks = self.phase_peaks.setdefault(self.phase, {"main_rss": 0, "tree_pss": 0})
        peaks["main_rss"], peaks["tree_pss"] = max(peaks["main_rss"], main_rss), max(peaks["tree_pss"], pss)
        self.max_procs, self.samples = max(self.max_procs, len(tree)), self.samples + 1


# ---------------------------------------------------------------- one prepare run
PHASE_MARKS = (  # (phase that starts, text in prepare's output that marks it), in order
    ("read", "read train"),
    ("spm", "learning a "),
    ("encode", "encode train"),
    ("finish", "pairs kept of"),
)


@dataclass
class Run:
    pairs: int
    workers: int
    command: list[str]
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float] | None = None
    wall_s: float = 0.0
    phases_s: dict = field(default_factory=dict)
    phase_peaks_mib: dict = field(default_factory=dict)  # phase -> sampled peak main RSS and tree PSS
    main_peak_mib: float = 0.0
    max_proc_peak_mib: float = 0.0
    max_proc_ru_maxrss_mib: float = 0.0
    tree_rss_peak_mib: float = 0.0
    tree_pss_peak_mib: float = 0.0
    max_processes: int = 0
    memory_samples: int = 0
    pairs_kept: int | None = None
    dataset_mib: float | None = None
    returncode: int | None = None
    output_tail: str = ""

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s

    @property
    def encode_pairs_per_s(self) -> float | None:
        encode = self.phases_s.get("encode")
        return self.pairs / encode if encode else None


def run_prepare(src: Path, tgt: Path, pairs: int, out: Path, vocab_size: int, workers: int, poll_s: float) -> Run:
    command = [
        sys.executable,
        "-m",
        "aiayn",
        "prepare",
        "--train-src",
        str(src),
        "--train-tgt",
        str(tgt),
        "--out",
        str(out),
        "--vocab-size",
        str(vocab_size),
        "--workers",
        str(workers),
    ]
    run = Run(pairs, workers, command, os.getloadavg())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    marks: dict[str, float] = {}
    output = bytearray()

    def read_output(fd: int) -> None:  # timestamps the phase markers as they are printed
        pending = list(PHASE_MARKS)
        while chunk := os.read(fd, 65536):
            output.extend(chunk)
            now = time.perf_counter()
            while pending and pending[0][1].encode() in output[-(len(chunk) + 64) :]:
                sampler.phase = pending[0][0]
                marks[pending.pop(0)[0]] = now

    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = TreeSampler(proc.pid, poll_s)
    reader = threading.Thread(target=read_output, args=(proc.stdout.fileno(),), daemon=True)
    sampler.start()
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child and the workers it reaped
    ended = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stopped.set()
    sampler.join()
    reader.join()
    proc.stdout.close()

    run.returncode = proc.returncode
    run.wall_s = ended - started
    run.loadavg_after = os.getloadavg()
    bounds = [("startup", started)] + [(name, marks[name]) for name, _ in PHASE_MARKS if name in marks] + [("", ended)]
    run.phases_s = {name: round(t1 - t0, 3) for (name, t0), (_, t1) in zip(bounds, bounds[1:])}
    run.main_peak_mib = sampler.main_hwm_kib / 1024
    run.max_proc_peak_mib = sampler.proc_hwm_kib / 1024
    run.max_proc_ru_maxrss_mib = usage.ru_maxrss / 1024  # KiB on Linux; includes the spawning image (see above)
    run.tree_rss_peak_mib, run.tree_pss_peak_mib = sampler.tree_rss_kib / 1024, sampler.tree_pss_kib / 1024
    run.max_processes, run.memory_samples = sampler.max_procs, sampler.samples
    run.phase_peaks_mib = {phase: {k: round(v / 1024, 1) for k, v in peaks.items()} for phase, peaks in sampler.phase_peaks.items()}
    run.output_tail = output[-2000:].decode("utf-8", "replace").replace("\r", "\n")
    if run.returncode == 0:
        meta = json.loads((out / "meta.json").read_text())
        run.pairs_kept = meta["splits"]["train"]["pairs"]
        run.dataset_mib = sum(f.stat().st_size for f in out.iterdir()) / MIB
    return run


# ---------------------------------------------------------------- report
def machine_info() -> dict:
    from aiayn.runtime import machine

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        with open("/proc/meminfo") as f:
            mem_total = int(f.readline().split()[1]) // 1024
    except OSError:
        mem_total = None
    return {
        **machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total_mib": mem_total,
        **{dist: version(dist) for dist in ("numpy", "sentencepiece", "tqdm", "aiayn")},
    }


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(runs: list[Run]) -> None:
    header = (
        "pairs",
        "workers",
        "wall s",
        "pairs/s",
        "read s",
        "spm s",
        "encode s",
        "enc pairs/s",
        "main MiB",
        "max-proc MiB",
        "tree RSS MiB",
        "tree PSS MiB",
    )
    rows = [
        (
            f"{r.pairs:,}",
            str(r.workers),
            fmt(r.wall_s, ".1f"),
            fmt(r.pairs_per_s, ",.0f"),
            fmt(r.phases_s.get("read"), ".1f"),
            fmt(r.phases_s.get("spm"), ".1f"),
            fmt(r.phases_s.get("encode"), ".1f"),
            fmt(r.encode_pairs_per_s, ",.0f"),
            fmt(r.main_peak_mib, ".0f"),
            fmt(r.max_proc_peak_mib, ".0f"),
            fmt(r.tree_rss_peak_mib, ".0f"),
            fmt(r.tree_pss_peak_mib, ".0f"),
        )
        for r in runs
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


def print_phase_memory(runs: list[Run]) -> None:
    phases = ["startup"] + [name for name, _ in PHASE_MARKS]
    print("sampled peak by phase, MiB: tree PSS (main process RSS); load average 1 min before -> after")
    for r in runs:
        cells = [
            f"{ph} {fmt(r.phase_peaks_mib.get(ph, {}).get('tree_pss'), '.0f')} ({fmt(r.phase_peaks_mib.get(ph, {}).get('main_rss'), '.0f')})"
            for ph in phases
        ]
        load = f"{r.loadavg_before[0]:.2f} -> {r.loadavg_after[0]:.2f}" if r.loadavg_after else ""
        print(f"  {r.pairs:>10,} pairs, {r.workers}w: " + ", ".join(cells) + f"; load {load}")


def check_goals(size_runs: list[Run], scaling_runs: list[Run]) -> list[dict]:
    goals = []
    if len(size_runs) >= 2:
        small, large = size_runs[0], size_runs[-1]
        for metric, label in (("tree_pss_peak_mib", "tree PSS (total)"), ("max_proc_peak_mib", "max single process")):
            ratio = getattr(large, metric) / getattr(small, metric)
            goals.append(
                {
                    "goal": f"bounded memory, {label}: peak at {large.pairs:,} pairs <= {MEMORY_GOAL}x peak at {small.pairs:,}",
                    "value": round(ratio, 3),
                    "passed": ratio <= MEMORY_GOAL,
                    "detail": f"{getattr(large, metric):.0f} MiB / {getattr(small, metric):.0f} MiB = {ratio:.2f}x",
                }
            )
    if len(scaling_runs) >= 2:
        base = scaling_runs[0]
        speedups = [r.pairs_per_s / base.pairs_per_s for r in scaling_runs]
        encode = [
            r.encode_pairs_per_s / base.encode_pairs_per_s if r.encode_pairs_per_s and base.encode_pairs_per_s else None
            for r in scaling_runs
        ]
        grows = all(b.pairs_per_s > a.pairs_per_s for a, b in zip(scaling_runs, scaling_runs[1:]))
        goals.append(
            {
                "goal": f"throughput grows with workers ({', '.join(str(r.workers) for r in scaling_runs)}) at {base.pairs:,} pairs",
                "value": [round(s, 3) for s in speedups],
                "passed": grows,
                "detail": "whole-run speedup "
                + ", ".join(f"{r.workers}w {s:.2f}x" for r, s in zip(scaling_runs, speedups))
                + "; encode-phase speedup "
                + ", ".join(f"{r.workers}w {fmt(s, '.2f')}x" for r, s in zip(scaling_runs, encode)),
                "encode_speedup": [None if s is None else round(s, 3) for s in encode],
            }
        )
    return goals


# ---------------------------------------------------------------- main
def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.replace("_", "").split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_ints, default=[100_000, 1_000_000], help="corpus sizes in pairs (default 100000,1000000)")
    p.add_argument("--workers", type=parse_ints, default=[1, 2], help="worker counts for the scaling runs (default 1,2)")
    p.add_argument("--scaling-size", type=int, help="pairs for the scaling runs (default: the largest size; must be one of --sizes)")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece vocabulary size (default 8000)")
    p.add_argument("--quick", action="store_true", help="a smoke run: sizes 20000,200000")
    p.add_argument("--keep", action="store_true", help="keep the corpora and datasets (the temporary directory is printed)")
    p.add_argument("--tmp", type=Path, help="parent of the temporary directory (default: the system's)")
    p.add_argument("--poll-ms", type=float, default=50, help="memory sampling interval (default 50 ms)")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = p.parse_args(argv)
    sizes = sorted(set([20_000, 200_000] if args.quick else args.sizes))
    workers = sorted(set(args.workers))
    scaling_size = args.scaling_size or sizes[-1]
    if scaling_size not in sizes:
        p.error(f"--scaling-size {scaling_size} is not one of --sizes {sizes}")
    size_workers = workers[-1]  # the memory-vs-size runs use the most workers (prepare's default is all cores)

    info = machine_info()
    command_line = shlex.join([sys.executable, *sys.argv])
    print(
        f"machine: {info['cpu_count']} cpus ({info['cpu']}), {info['mem_total_mib']} MiB; python {info['python']}, "
        f"torch {info['torch']}, sentencepiece {info['sentencepiece']}; load average {os.getloadavg()}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="aiayn-prepare-bench-", dir=args.tmp))
    print(f"working in {tmp}")
    started = time.time()
    runs: list[Run] = []
    failed = False
    try:
        for n in sizes:
            corpus = tmp / f"corpus-{n}"
            corpus.mkdir()
            t0 = time.perf_counter()
            src, tgt = generate_corpus(n, corpus)
            mib = (src.stat().st_size + tgt.stat().st_size) / MIB
            print(f"\ngenerated {n:,} pairs ({mib:.0f} MiB) in {time.perf_counter() - t0:.1f}s (not measured)")
            plan = [size_workers] + ([w for w in reversed(workers) if w != size_workers] if n == scaling_size else [])
            for w in plan:
                out = tmp / f"data-{n}-w{w}"
                print(f"prepare {n:,} pairs, {w} worker(s) ... ", end="", flush=True)
                run = run_prepare(src, tgt, n, out, args.vocab_size, w, args.poll_ms / 1000)
                runs.append(run)
                if run.returncode != 0:
                    print(f"FAILED (exit {run.returncode})\n{run.output_tail}")
                    failed = True
                    break
                print(
                    f"{run.wall_s:.1f}s, {run.pairs_per_s:,.0f} pairs/s, tree PSS {run.tree_pss_peak_mib:.0f} MiB (phases {run.phases_s})"
                )
                if not args.keep:
                    shutil.rmtree(out)
            if failed:
                break
            if not args.keep:
                shutil.rmtree(corpus)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"\nkept {tmp}")

    ok = [r for r in runs if r.returncode == 0]
    size_runs = sorted((r for r in ok if r.workers == size_workers), key=lambda r: r.pairs)
    scaling_runs = sorted((r for r in ok if r.pairs == scaling_size), key=lambda r: r.workers)
    goals = check_goals(size_runs, scaling_runs)
    elapsed = time.time() - started

    print()
    print_table(sorted(ok, key=lambda r: (r.pairs, r.workers)))
    print("\nmain: VmHWM of the prepare process; max-proc: largest VmHWM of any one process (prepare or a worker);")
    print(f"tree RSS/PSS: largest sum over prepare + workers, sampled every {args.poll_ms:g} ms (PSS shares COW pages fairly)\n")
    print_phase_memory(sorted(ok, key=lambda r: (r.pairs, r.workers)))
    print()
    for g in goals:
        print(f"{'PASS' if g['passed'] else 'FAIL'}  {g['goal']}: {g['detail']}")
    print(f"\nbenchmark took {elapsed:.0f}s")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "prepare_scaling",
        "command": command_line,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info,
        "settings": {
            "sizes": sizes,
            "workers": workers,
            "size_runs_workers": size_workers,
            "scaling_size": scaling_size,
            "vocab_size": args.vocab_size,
            "poll_ms": args.poll_ms,
        },
        "runs": [
            {
                **asdict(r),
                "pairs_per_s": round(r.pairs_per_s, 1),
                "encode_pairs_per_s": r.encode_pairs_per_s and round(r.encode_pairs_per_s, 1),
                "output_tail": r.output_tail if r.returncode else "",
            }
            for r in runs
        ],
        "goals": goals,
        "seconds": round(elapsed, 1),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
