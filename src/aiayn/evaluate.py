"""`aiayn evaluate`: corpus BLEU and chrF with sacreBLEU (the scores everyone reports, with signatures)."""

from __future__ import annotations

from pathlib import Path


def score(hypotheses: list[str], references: list[str], tokenize: str = "13a"):
    """(BLEU, chrF) sacreBLEU score objects for detokenized hypotheses against one reference each."""
    return _score(hypotheses, references, tokenize)[:2]


def _score(hypotheses, references, tokenize):
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("nothing to score: no sentences")
    try:
        bleu = sacrebleu.metrics.BLEU(tokenize=tokenize)
    except (KeyError, ValueError, RuntimeError):
        names = sorted(sacrebleu.metrics.bleu._TOKENIZERS) if hasattr(sacrebleu.metrics.bleu, "_TOKENIZERS") else []
        raise ValueError(
            f"--tokenize {tokenize!r}: not a sacreBLEU tokenizer{' (one of ' + ', '.join(names) + ')' if names else ''}"
        ) from None
    chrf = sacrebleu.metrics.CHRF()
    return bleu.corpus_score(hypotheses, [references]), chrf.corpus_score(hypotheses, [references]), bleu, chrf


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (an error names the line of invalid UTF-8)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: invalid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def evaluate(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> dict:
    bleu, chrf, bleu_metric, chrf_metric = _score(hypotheses, references, tokenize)
    return {
        "bleu": round(bleu.score, 2),
        "chrf": round(chrf.score, 2),
        "sentences": len(hypotheses),
        "bleu_detail": str(bleu),
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
    }


def evaluate_files(hyp: str | Path, ref: str | Path, tokenize: str = "13a") -> dict:
    """Scores of a hypothesis file against a reference file (one sentence a line, same count)."""
    hyps, refs = read_lines(hyp), read_lines(ref)
    if not hyps and not refs:
        raise ValueError(f"{hyp} and {ref} are empty: nothing to score")
    if len(hyps) != len(refs):
        raise ValueError(f"{hyp} has {len(hyps)} lines but {ref} has {len(refs)}")
    return evaluate(hyps, refs, tokenize)


def evaluate_lm(model_path: str | Path, text_path: str | Path, device: str = "auto") -> dict:
    """A language model's loss (bits and nats per token), perplexity and bits per character on a
    text file, read and checked as 'aiayn prepare --task lm' reads text (documents after separators)."""
    import math

    import numpy as np

    from aiayn import runtime
    from aiayn.data.text import TextStats, read_documents
    from aiayn.io.checkpoint import load_model
    from aiayn.tasks.lm import evaluate_stream

    where = runtime.device(device)
    model, ckpt = load_model(model_path, where, task="lm", what="a language model (what --text scores)")
    tok, eos = ckpt.tokenizer, model.config.eos_id
    stats, ids = TextStats(), [eos]
    for doc in read_documents(text_path, stats=stats):
        ids += tok.encode(["\n".join(doc)])[0] + [eos]
    if stats.documents == 0:
        raise ValueError(f"{text_path}: no text to score")
    result = evaluate_stream(model, np.asarray(ids, dtype=np.int64), where, characters=stats.characters)
    return {
        "loss": result["valid_nll"],
        "loss_nats": result["valid_nll"] * math.log(2),
        "perplexity": result["valid_ppl"],
        "bits_per_char": result["valid_bpc"],
        "tokens": len(ids) - 1,
        "characters": stats.characters,
    }
