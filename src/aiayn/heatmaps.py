"""`aiayn attention`: what the attention of §3.2 does, for people.

Translate a sentence, re-run the model over its translation, and show the encoder-decoder
attention of every layer and head (rows: output subwords, columns: source subwords) and the
encoder self-attention (rows and columns: source subwords) as heat maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aiayn.generate.translate import Translator


@dataclass
class AttentionMaps:
    source: list[str]  # source subwords + </s>
    target: list[str]  # output subwords + </s> (the row of each is the step that produced it)
    translation: str
    cross: list  # per layer: [heads, len(target), len(source)] nested lists
    encoder: list  # per layer: [heads, len(source), len(source)]

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "translation": self.translation, "cross": self.cross, "encoder": self.encoder}


def attention_maps(translator: Translator, text: str) -> AttentionMaps:
    """The attention weights for one sentence and its translation (by the translator's search)."""
    tr = translator.translate([text])[0]
    src_ids = tr.src_tokens
    src = translator._tensor([src_ids])
    cross, encoder, _ = translator.cross_attention(src, [tr.tokens])
    S, T = len(src_ids) + 1, len(tr.tokens) + 1
    src_pieces = translator.src_tok.pieces(src_ids) + ["</s>"]
    tgt_pieces = translator.tgt_tok.pieces(tr.tokens) + ["</s>"]
    return AttentionMaps(
        src_pieces,
        tgt_pieces,
        tr.text,
        [layer[0, :, :T, :S].tolist() for layer in cross],
        [layer[0, :, :S, :S].tolist() for layer in encoder],
    )


def render(
    maps: AttentionMaps,
    out: str | Path,
    kinds: tuple[str, ...] = ("cross", "encoder"),
    layers: list[int] | None = None,
    average_heads: bool = False,
) -> tuple[Path, int]:
    """Heat maps, one panel per (kind, layer, head), or per (kind, layer) with average_heads."""
    from aiayn.plot import plot_attention

    panels = []
    for kind in kinds:
        per_layer = maps.cross if kind == "cross" else maps.encoder
        rows = maps.target if kind == "cross" else maps.source
        name = "encoder-decoder" if kind == "cross" else "encoder self"
        chosen = range(len(per_layer)) if layers is None else [l % len(per_layer) for l in layers]
        for l in chosen:
            heads = torch.tensor(per_layer[l])
            if average_heads:
                panels.append((f"{name} attention, layer {l + 1}, mean of heads", heads.mean(0).numpy(), rows, maps.source))
            else:
                for h in range(heads.size(0)):
                    panels.append((f"{name} L{l + 1} H{h + 1}", heads[h].numpy(), rows, maps.source))
    if not panels:
        raise ValueError("nothing to draw: choose at least one kind of attention and one layer")
    columns = 1 if average_heads else heads.size(0)
    return plot_attention(panels, out, columns=min(columns, len(panels)))
