"""Pictures: training curves of a run (`aiayn plot`) and attention heat maps (`aiayn attention`)."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no log.jsonl (is it a training run directory?)")
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return entries


METRICS = {  # the validation measure drawn where there is no BLEU
    "valid_accuracy": "valid accuracy (%)",
    "valid_zero_shot_accuracy": "valid zero-shot accuracy (%)",
    "valid_recall@5": "valid recall@5 (%)",
}


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss (train and valid, bits per token) and valid BLEU against updates, as a PNG."""
    plt = _pyplot()
    entries = read_log(run_dir)
    train = [e for e in entries if e.get("type") == "train"]
    valid = [e for e in entries if e.get("type") == "valid"]
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if train:
        ax.plot([e["step"] for e in train], [e["loss"] for e in train], label="train loss (label-smoothed)")
        ax.plot([e["step"] for e in train], [e["nll"] for e in train], label="train NLL", alpha=0.7)
    if valid:
        ax.plot([e["step"] for e in valid], [e.get("valid_nll", e.get("valid_loss")) for e in valid], "o-", label="valid NLL")
    ax.set_xlabel("update")
    ax.set_ylabel("bits per target token")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    bleu = [e for e in valid if "valid_bleu" in e]
    if bleu:
        ax.plot([e["step"] for e in bleu], [e["valid_bleu"] for e in bleu], "o-", color="C3", label="valid BLEU")
        if any("valid_chrf" in e for e in bleu):
            ax.plot([e["step"] for e in bleu], [e["valid_chrf"] for e in bleu], "s--", color="C2", label="valid chrF")
        ax.legend()
    else:
        metric = next((k for k in METRICS if any(k in e for e in valid)), None)
        if metric:
            shown = [e for e in valid if metric in e]
            ax.plot([e["step"] for e in shown], [e[metric] for e in shown], "o-", color="C3", label=METRICS[metric])
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("update")
    ax.set_title("validation")
    ax.grid(alpha=0.3)
    fig.suptitle(str(Path(run_dir).name))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_attention(maps: list[tuple[str, "object", list[str], list[str]]], out: str | Path, columns: int | None = None) -> tuple[Path, int]:
    """One heat-map panel per (title, weights [rows, cols], row labels, column labels); returns the
    path and the number of panels. Rows are queries (e.g. output subwords), columns keys."""
    plt = _pyplot()
    n = len(maps)
    columns = columns or min(n, 4)
    rows = (n + columns - 1) // columns
    first = maps[0][1]
    cell = 0.28
    width = max(3.0, cell * first.shape[1] + 1.5)
    height = max(2.5, cell * first.shape[0] + 1.2)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.remove()
            continue
        title, weights, row_labels, col_labels = maps[k]
        ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto")
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out), n
