"""The paper's claim on one table: the Transformer against the recurrent encoder-decoder with
attention it replaced (RNNsearch, Bahdanau et al. 2014), at equal CPU wall-clock budgets.

Two parts, both on ../shared/data/bible-en-es (28,006 / 1,000 / 1,000 verse pairs, one joint
sentencepiece BPE vocabulary of 8,000 for every system):

  budget   a Transformer of `tiny`'s size and aiayn `rnnsearch-tiny` (about the same parameter
           count), each trained once for --minutes with its recipe for a budget (the quickstart's
           for the Transformer, held at tiny's width; rnnsearch-tiny.yaml's for the RNN; both chosen
           on the valid set), every 100 updates a checkpoint; for every budget mark (--marks,
           minutes) the last --average checkpoints written by then are averaged and the test set
           is translated with beam 4 (α = 0.6): sacreBLEU BLEU / chrF against minutes. Both
           schedules hold the peak and decay linearly over the budget's last 30%, so a mark before
           the last is a point of the --minutes run at its peak learning rate, not a run planned
           for that budget (which would end decayed, and better). Beside them, OpenNMT-py's RNN
           (bidirectional GRU encoder, MLP attention, GRU decoder; benchmarks/peer_rnn.py) trained
           for the longest budget on the same pieces.
  scaling  the parallelism claim: at a fixed 4,096 tokens per batch and sentence lengths of 16 to
           256 tokens, the encoder's forward pass and a full training step (forward, backward,
           Adam) of both models, median of --repeats.

    .venv/bin/python benchmarks/transformer_vs_rnn.py                      # 30 minutes each, both parts
    .venv/bin/python benchmarks/transformer_vs_rnn.py --minutes 12 --marks 3 6 12 --skip-peer
    .venv/bin/python benchmarks/transformer_vs_rnn.py --parts scaling

Prints the tables; writes benchmarks/results/transformer_vs_rnn.json and (when neither model is
skipped) docs/transformer_vs_rnn.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bible_en_es import DEFAULT_DATA, prepare, sh  # noqa: E402

from aiayn.models.presets import PRESETS  # noqa: E402
from aiayn.runtime import machine  # noqa: E402
from aiayn.train.config import load_config  # noqa: E402

_TINY = PRESETS["tiny"][1]
# Each system: the preset it is (the scaling part builds it), and the config and overrides that train
# it (the budget part). The quickstart's recipe widens the model from 30 minutes on; held at tiny's width
# and its base peak here, its 30-minute entry is the tiny-wide trial with dropout 0.1 (quickstart.yaml).
SYSTEMS = {
    "transformer": (
        "tiny",
        "quickstart",
        ["--model.d_model", _TINY["d_model"], "--model.d_ff", _TINY["d_ff"], "--lr", load_config("quickstart").lr],
    ),
    "rnnsearch": ("rnnsearch-tiny", "rnnsearch-tiny", []),
}


# ---------------------------------------------------------------- budget
def train(dataset: Path, run: Path, config: str, overrides: list, minutes: float, threads: int, log: Path) -> None:
    if run.exists():
        import shutil

        shutil.rmtree(run)
    sh(
        ["train", "--data", dataset, "--config", config, "--out", run, "--max-time", minutes, "--threads", threads, "--precision", "fp32"]
        + ["--save-every", 100, "--keep-last", 0, "--validate-every", 0, "--valid-bleu", "false", *overrides],
        log,
    )


def checkpoints_by_time(run: Path) -> list[dict]:
    """The run's checkpoints with their training time (seconds) and tokens seen, in order."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [e for e in log if e.get("type") == "checkpoint"]


def evaluate_mark(dataset: Path, run: Path, ckpts: list[dict], seconds: float, average: int, out: Path) -> dict | None:
    from aiayn.evaluate import evaluate_files

    done = [c for c in ckpts if c["time"] <= seconds + 1.0]
    if not done:
        return None
    chosen = done[-average:]
    model = out.with_suffix(".safetensors")
    sh(["average", "--checkpoints", *[run / "checkpoints" / c["file"] for c in chosen], "--out", model])
    t0 = time.time()
    hyp = out.with_suffix(".hyp.es")
    sh(["translate", "--model", model, "--input", dataset / "test.src.txt", "--output", hyp, "--beam", 4, "--alpha", 0.6])
    translate_seconds = time.time() - t0
    scores = evaluate_files(hyp, dataset / "test.tgt.txt")
    model.unlink()
    last = chosen[-1]
    return {
        "minutes": seconds / 60,
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "updates": last["step"],
        "trained_seconds": last["time"],
        "averaged": [c["file"] for c in chosen],
        "tokens_per_s": last["tokens_seen"] / last["time"],
        "target_tokens_per_s": last["loss_tokens_seen"] / last["time"],
        "translate_seconds": round(translate_seconds, 1),
    }


def pieces_for_peer(data: Path, dataset: Path, out: Path) -> Path:
    """The prepared splits as sentencepiece pieces (the peer sees the same vocabulary and segmentation)."""
    from aiayn.data.binarize import load_tokenizers

    src_tok, tgt_tok = load_tokenizers(dataset)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        for side, lang, tok in (("src", "en", src_tok), ("tgt", "es", tgt_tok)):
            lines = (data / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            (out / f"{split}.{side}").write_text("\n".join(" ".join(tok.pieces(ids)) for ids in tok.encode(lines)) + "\n", encoding="utf-8")
    return out


def run_peer(data: Path, dataset: Path, work: Path, minutes: float, threads: int) -> dict:
    import peer_rnn

    from aiayn.data.binarize import load_tokenizers
    from aiayn.evaluate import evaluate_files

    pieces = pieces_for_peer(data, dataset, work / "pieces")
    # rnnsearch-tiny's decoder size (160) and embeddings (128); OpenNMT-py gives each encoder direction half of it
    result = peer_rnn.run(pieces, work / "onmt", minutes, emb=128, hidden=160, size_match="decoder", threads=threads)
    _, tgt_tok = load_tokenizers(dataset)
    ids = {piece: i for i, piece in enumerate(tgt_tok.pieces(range(tgt_tok.vocab_size)))}
    hyp_pieces = Path(result["hyp"]).read_text(encoding="utf-8").splitlines()
    hyp = work / "onmt.test.hyp.es"
    hyp.write_text("\n".join(tgt_tok.decode([ids.get(p, 1) for p in line.split()]) for line in hyp_pieces) + "\n", encoding="utf-8")
    scores = evaluate_files(hyp, dataset / "test.tgt.txt")
    return {**result, "bleu": scores["bleu"], "chrf": scores["chrf"], "minutes": minutes}


def budget_part(args, dataset: Path) -> dict:
    results = {}
    for system, (_, config, overrides) in SYSTEMS.items():
        if system in args.skip:
            continue
        run = args.work / f"{system}-run"
        if not args.reuse_runs:
            train(dataset, run, config, overrides, args.minutes, args.threads, args.work / f"{system}-train.log")
        ckpts = checkpoints_by_time(run)
        curve = []
        for mark in args.marks:
            point = evaluate_mark(dataset, run, ckpts, mark * 60, args.average, args.work / f"{system}-{mark:g}min")
            if point:
                curve.append(point)
                print(
                    f"{system} at {mark:g} min: BLEU {point['bleu']:.2f} chrF {point['chrf']:.2f} ({point['updates']} updates)", flush=True
                )
        results[system] = {"config": config, "overrides": [str(o) for o in overrides], "curve": curve}
    if not args.skip_peer:
        results["opennmt-py"] = run_peer(args.data, dataset, args.work / "peer", args.minutes, args.threads)
    return results


def minutes_to_reach(curve: list[dict], bleu: float) -> float | None:
    """The first budget (linear between marks) at which a curve reaches `bleu`."""
    prev = None
    for p in curve:
        if p["bleu"] >= bleu:
            if prev is None:
                return p["minutes"]
            f = (bleu - prev["bleu"]) / (p["bleu"] - prev["bleu"])
            return prev["minutes"] + f * (p["minutes"] - prev["minutes"])
        prev = p
    return None


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for system, label in (("transformer", "Transformer (tiny)"), ("rnnsearch", "RNNsearch (rnnsearch-tiny)")):
        curve = results.get(system, {}).get("curve", [])
        if curve:
            ax.plot([p["minutes"] for p in curve], [p["bleu"] for p in curve], marker="o", label=label)
    peer = results.get("opennmt-py")
    if peer:
        ax.scatter([peer["minutes"]], [peer["bleu"]], marker="s", color="black", label="OpenNMT-py RNN", zorder=3)
    ax.set_xlabel("training minutes (2 CPU threads)")
    ax.set_ylabel("test BLEU (beam 4)")
    ax.set_title("Bible en→es: BLEU against CPU wall-clock")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- scaling
def scaling_part(args) -> list[dict]:
    import torch

    from aiayn import models
    from aiayn.train.loss import label_smoothed_nll

    torch.set_num_threads(args.threads)
    rows = []
    for system, (preset, _, _) in SYSTEMS.items():
        arch, cfg = models.preset_config(preset, vocab_size=8000)
        torch.manual_seed(0)
        model = models.build(arch, cfg)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        for length in args.lengths:
            n = max(1, args.batch_tokens // length)
            g = torch.Generator().manual_seed(length)
            src = torch.randint(4, 8000, (n, length), generator=g)
            tgt = torch.randint(4, 8000, (n, length + 1), generator=g)
            tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]

            def encoder():
                with torch.no_grad():
                    model.encode(src)

            def step():
                hidden, _ = model.decode(tgt_in, model.encode(src))
                loss, _ = label_smoothed_nll(model.project(hidden.reshape(-1, hidden.size(-1))), tgt_out.reshape(-1), 0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()

            timings = {}
            for name, fn, train_mode in (("encoder_ms", encoder, False), ("train_step_ms", step, True)):
                model.train(train_mode)
                fn()  # warm-up
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - t0) * 1000)
                timings[name] = statistics.median(times)
            rows.append({"system": system, "length": length, "sentences": n, **timings})
            print(
                f"{system:<12} length {length:>4} × {n:>4} sentences: encoder {timings['encoder_ms']:8.1f} ms, train step {timings['train_step_ms']:8.1f} ms",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------- report
def report(record: dict) -> None:
    budget = record.get("budget")
    if budget:
        print(
            f"\nBible en→es test (1,000 verses), beam 4, 8k joint BPE; training on {record['threads']} CPU threads ({record['machine']['cpu']})"
        )
        print(f"{'system':<34} {'minutes':>7} {'BLEU':>6} {'chrF':>6} {'updates':>8} {'tgt tok/s':>9}")
        for system in ("transformer", "rnnsearch"):
            for p in budget.get(system, {}).get("curve", []):
                print(
                    f"{system:<34} {p['minutes']:>7g} {p['bleu']:>6.2f} {p['chrf']:>6.2f} {p['updates']:>8} {p['target_tokens_per_s']:>9.0f}"
                )
        peer = budget.get("opennmt-py")
        if peer:
            tps = peer.get("train_tgt_tokens_per_second") or 0
            print(
                f"{'OpenNMT-py ' + peer['version'] + ' RNN':<34} {peer['minutes']:>7g} {peer['bleu']:>6.2f} {peer['chrf']:>6.2f} {peer['updates']:>8} {tps:>9.0f}"
            )
        for k, v in record.get("summary", {}).items():
            print(f"  {k}: {v}")
    rows = record.get("scaling")
    if rows:
        print(f"\nFixed {record['batch_tokens']} tokens per batch; median ms ({record['threads']} threads)")
        print(f"{'length':>6} {'TF encoder':>11} {'RNN encoder':>12} {'ratio':>6} {'TF step':>9} {'RNN step':>9} {'ratio':>6}")
        by = {(r["system"], r["length"]): r for r in rows}
        for length in sorted({r["length"] for r in rows}):
            t, r = by.get(("transformer", length)), by.get(("rnnsearch", length))
            if t and r:
                print(
                    f"{length:>6} {t['encoder_ms']:>11.1f} {r['encoder_ms']:>12.1f} {r['encoder_ms'] / t['encoder_ms']:>6.2f}"
                    f" {t['train_step_ms']:>9.1f} {r['train_step_ms']:>9.1f} {r['train_step_ms'] / t['train_step_ms']:>6.2f}"
                )


def summarize(budget: dict) -> dict:
    out = {}
    tf, rnn = budget.get("transformer", {}).get("curve", []), budget.get("rnnsearch", {}).get("curve", [])
    if tf and rnn:
        best = max(rnn, key=lambda p: p["bleu"])
        reach = minutes_to_reach(tf, best["bleu"])
        out["rnn_best_bleu"] = best["bleu"]
        out["rnn_best_at_minutes"] = best["minutes"]
        out["transformer_minutes_to_rnn_best"] = reach
        if reach is not None:
            out["transformer_time_share_of_rnn"] = reach / best["minutes"]
        out["transformer_ahead_at_every_mark"] = all(
            t["bleu"] > r["bleu"] for t in tf for r in rnn if abs(t["minutes"] - r["minutes"]) < 1e-6
        )
        out["target_tokens_per_s_rnn_over_transformer"] = rnn[-1]["target_tokens_per_s"] / tf[-1]["target_tokens_per_s"]
    peer = budget.get("opennmt-py")
    if rnn and peer and peer.get("train_tgt_tokens_per_second"):
        same = [p for p in rnn if abs(p["minutes"] - peer["minutes"]) < 1e-6]
        if same:
            out["rnn_minus_peer_bleu"] = same[0]["bleu"] - peer["bleu"]
        out["rnn_over_peer_target_tokens_per_s"] = rnn[-1]["target_tokens_per_s"] / peer["train_tgt_tokens_per_second"]
        if peer.get("train_tgt_tokens_per_second_loop"):  # the peer's training loop alone: its start-up left out, as aiayn's is
            out["rnn_over_peer_target_tokens_per_s_loop"] = rnn[-1]["target_tokens_per_s"] / peer["train_tgt_tokens_per_second_loop"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the bible-en-es folder")
    p.add_argument("--work", type=Path, default=Path("/tmp/aiayn-transformer-vs-rnn"), help="runs and translations go here")
    p.add_argument("--parts", nargs="+", choices=("budget", "scaling"), default=["scaling", "budget"])
    p.add_argument("--minutes", type=float, default=30.0, help="the longest budget: each system trains this long")
    p.add_argument("--marks", type=float, nargs="+", default=[1, 2, 3, 6, 9, 12, 18, 24, 30], help="budgets (minutes) to score")
    p.add_argument("--average", type=int, default=5, help="average the last K checkpoints at each mark")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=list(SYSTEMS), help="aiayn systems not to train")
    p.add_argument("--skip-peer", action="store_true", help="leave OpenNMT-py out")
    p.add_argument("--reuse-runs", action="store_true", help="score the runs already in --work instead of training")
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=HERE / "results" / "transformer_vs_rnn.json")
    args = p.parse_args()
    args.marks = sorted(m for m in args.marks if m <= args.minutes) or [args.minutes]
    if args.marks[-1] != args.minutes:
        args.marks.append(args.minutes)
    args.work.mkdir(parents=True, exist_ok=True)
    record = json.loads(args.out.read_text()) if args.out.is_file() else {}
    record.update(command=" ".join(sys.argv), threads=args.threads, machine=machine(), batch_tokens=args.batch_tokens)
    if "scaling" in args.parts:
        record["scaling"] = scaling_part(args)
        record["scaling_date"] = time.strftime("%Y-%m-%d %H:%M")
    if "budget" in args.parts:
        if not (args.data / "train.en").is_file():
            raise SystemExit(f"no Bible corpus at {args.data}")
        dataset = prepare(args.data, args.work, 8000)
        record["budget"] = budget_part(args, dataset)
        record["summary"] = summarize(record["budget"])
        record["minutes"] = args.minutes
        record["budget_date"] = time.strftime("%Y-%m-%d %H:%M")
        if not args.skip:  # the docs' plot compares both models: a run of one leaves it as it is
            plot(record["budget"], REPO / "docs" / "transformer_vs_rnn.png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    report(record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
