"""`aiayn quickstart`: the whole pipeline in a few minutes on a CPU, on data shipped with aiayn.

prepare (joint BPE) → train a `tiny` model for --minutes → average the last checkpoints →
translate the held-out test verses with beam 4 → sacreBLEU → an attention heat map.
Nothing is downloaded and nothing outside the package is needed.
"""

from __future__ import annotations

import time
from pathlib import Path

EXAMPLE = "In the beginning God created the heavens and the earth."


def _vector_unit(flags: list[str]) -> str:
    """The widest vector extension among lscpu's flags, as people name it (two CPUs can share a model name)."""
    for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return f" with {name}"
    return ""


def _flat(values: dict, prefix: str = "") -> dict:
    """{'model': {'dropout': 0.1}, 'lr': 0.002} -> {'model.dropout': 0.1, 'lr': 0.002} (as `aiayn train` takes them)"""
    out = {}
    for key, value in values.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def budget_lines(minutes: float, record: dict | None = None) -> list[str]:
    """What a longer --minutes gives: the test BLEU of this recipe after each budget, as
    benchmarks/budget_curve.py measured it (`record`: by default its figures shipped in
    assets/budget_curve.json, with their machine; a row rerun later carries its own date and machine)."""
    import json
    from importlib import resources

    if record is None:
        try:
            record = json.loads((resources.files("aiayn") / "assets" / "budget_curve.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return []
    rows = sorted((r for r in record["rows"] if r["key"] == "aiayn"), key=lambda r: r["minutes"])
    if not rows:
        return []

    def where(row: dict) -> str:
        m = row.get("machine", record["machine"])
        return f"{m.get('threads', 2)}-thread {m.get('cpu', 'CPU')}{_vector_unit(m.get('flags', []))}"

    runs: list[tuple[str, str, list[dict]]] = []  # (machine, date, rows), in the order of the budgets
    for row in rows:
        key = (where(row), row.get("date", record["date"])[:10])
        if runs and runs[-1][:2] == key:
            runs[-1][2].append(row)
        else:
            runs.append((*key, [row]))
    verses = f", {record['test_sentences']:,} test verses" if record.get("test_sentences") else ""
    longer = next((r["minutes"] for r in rows if r["minutes"] > minutes), None)
    try_longer = [f"     try: aiayn quickstart --minutes {longer:g} --out another-dir"] if longer else []
    if len(runs) == 1:
        machine, date, _ = runs[0]
        figures = ", ".join(f"{r['bleu']:.1f} after {r['minutes']:g}" for r in rows)
        return [
            f"     a longer budget: on a {machine} ({date}{verses},",
            f"     benchmarks/budget_curve.py) this recipe reached test BLEU {figures} minutes;",
            *try_longer,
        ]
    lines = [f"     a longer budget: this recipe reached test BLEU (benchmarks/budget_curve.py{verses})"]
    for machine, date, group in runs:
        figures = ", ".join(f"{r['bleu']:.1f} after {r['minutes']:g}" for r in group)
        lines.append(f"     {figures} minutes on a {machine} ({date});")
    return lines + try_longer


def quickstart(out: str | Path = "quickstart", minutes: float = 3.0, test_sentences: int = 500, log=print) -> dict:
    from aiayn.data.binarize import PrepareOptions, prepare
    from aiayn.data.shipped import write_shipped_corpus
    from aiayn.evaluate import evaluate
    from aiayn.generate.translate import Translator
    from aiayn.heatmaps import attention_maps, render
    from aiayn.io.checkpoint import average_checkpoints, list_checkpoints, load_model
    from aiayn.train.config import config_budget, load_config
    from aiayn.train.trainer import Trainer

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    if list_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; choose another --out or delete it")

    log("1/5  the shipped corpus: World English Bible ↔ Reina-Valera 1909 (public domain), verse-aligned")
    corpus = write_shipped_corpus(out / "corpus")
    data = out / "data"
    log("2/5  aiayn prepare: check the text, learn a joint BPE vocabulary (sentencepiece), binarize")
    prepare(
        {"train": corpus["train"], "valid": corpus["valid"]},
        data,
        PrepareOptions(vocab_size=4000, progress=False),
        force=True,
        log=lambda m: log(f"     {m}"),
    )

    log(f"3/5  aiayn train: a small Transformer for {minutes:g} minutes (its learning rate reaches 0 as the time runs out)")
    budget = config_budget("quickstart", minutes)
    if budget:
        settings = ", ".join(f"{key}={value}" for key, value in _flat(budget).items() if key != "minutes")
        log(f"     the recipe for budgets of {budget['minutes']:g} minutes or more: {settings}")
    cfg = load_config("quickstart", {"max_time": minutes, "validate_every": 0, "valid_bleu": False})
    trainer = Trainer(cfg, data, run_dir, log=lambda m: log(f"     {m}"))
    summary = trainer.train()
    speed = summary["tokens_seen"] / max(trainer.train_seconds, 1e-9)
    log(f"     this machine: {summary['updates']:,} updates in {trainer.train_seconds / 60:.1f} minutes, {speed:,.0f} tokens/s")

    steps = [p for _, p in list_checkpoints(run_dir)]
    averaged = run_dir / "averaged.safetensors"
    average_checkpoints(steps[-5:], averaged)
    log(f"4/5  aiayn average: the last {len(steps[-5:])} checkpoints → {averaged}")

    en = corpus["test"][0].read_text(encoding="utf-8").splitlines()[:test_sentences]
    es = corpus["test"][1].read_text(encoding="utf-8").splitlines()[:test_sentences]
    model, ckpt = load_model(averaged)
    # no subword 3-gram twice: on 500 valid verses after 3 minutes, 263 outputs repeated a 3-word
    # sequence (40 references do) and none did with the ban, at valid BLEU 16.3 against 16.8
    translator = Translator(model, *ckpt.tokenizers, beam=4, no_repeat_ngram=3)
    t0 = time.time()
    hyps = [t.text for t in translator.translate(en)]
    result = evaluate(hyps, es)
    log(f"5/5  aiayn translate + evaluate: {len(en)} held-out test verses, beam 4, no 3-gram twice, in {time.time() - t0:.0f}s")
    log(f"\n     BLEU {result['bleu']:.1f}   chrF {result['chrf']:.1f}   ({result['bleu_signature']})\n")
    for i in (0, 1, 2):
        log(f"     EN   {en[i]}\n     REF  {es[i]}\n     AIAYN {hyps[i]}\n")
    for line in budget_lines(minutes):
        log(line)
    log("")
    png = out / "attention.png"
    maps = attention_maps(translator, EXAMPLE)
    render(maps, png, kinds=("cross",), layers=[-1])
    log(f"     {EXAMPLE}\n  →  {maps.translation}\n     attention map: {png}")
    elapsed = time.time() - started
    log(
        f"\ndone in {elapsed / 60:.1f} minutes. Next: aiayn translate --model {run_dir} --no-repeat-ngram 3 (reads standard input), "
        f"aiayn attention --model {run_dir} --text '…', aiayn plot {run_dir}"
    )
    return {**result, "minutes": elapsed / 60, "run_dir": str(run_dir)}
