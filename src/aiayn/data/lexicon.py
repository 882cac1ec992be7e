"""The lexical table behind vocabulary shortlists (generate.shortlist), learned by `aiayn prepare`.

For each source piece s and target piece t of the binarized training pairs: the Dice coefficient
2·c(s, t) / (c(s) + c(t)) of the numbers of sentence pairs that hold s, t and both — an
alignment-free association that needs one pass over the data. The dataset's
`shortlist.safetensors` keeps each source piece's TABLE_K best target pieces and the FREQUENT
target pieces found in most pairs. numpy only, like the rest of data preparation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TABLE_K = 64  # candidates stored per source piece (decoding takes the first `k` of them)
FREQUENT = 256  # most frequent target pieces stored


def _sentence_sets(tokens: np.ndarray, offsets: np.ndarray, lo: int, hi: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pieces of sentences lo…hi−1: (sentence index from 0, piece), sorted by sentence."""
    lengths = np.diff(offsets[lo : hi + 1])
    sentence = np.repeat(np.arange(hi - lo, dtype=np.int64), lengths)
    keys = np.unique(sentence * vocab + tokens[offsets[lo] : offsets[hi]].astype(np.int64))
    return keys // vocab, keys % vocab


def _cross(src_sent: np.ndarray, src_piece: np.ndarray, tgt_sent: np.ndarray, tgt_piece: np.ndarray, n: int, tgt_vocab: int):
    """Keys s·tgt_vocab + t of every (source piece, target piece) pair within each sentence pair."""
    tgt_start = np.searchsorted(tgt_sent, np.arange(n + 1))
    width = np.diff(tgt_start)[src_sent]  # the target set's size, for each source entry
    total = int(width.sum())
    block = np.repeat(np.cumsum(width) - width, width)  # where each source entry's block begins
    t_index = np.arange(total) - block + np.repeat(tgt_start[src_sent], width)
    return np.repeat(src_piece, width) * tgt_vocab + tgt_piece[t_index]


def _add_counts(keys: np.ndarray, counts: np.ndarray, new_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    new, new_counts = np.unique(new_keys, return_counts=True)
    merged, inverse = np.unique(np.concatenate([keys, new]), return_inverse=True)
    return merged, np.bincount(inverse, weights=np.concatenate([counts, new_counts]), minlength=len(merged)).astype(np.int64)


def learn_lexicon(
    src_tokens: np.ndarray,
    src_offsets: np.ndarray,
    tgt_tokens: np.ndarray,
    tgt_offsets: np.ndarray,
    src_vocab: int,
    tgt_vocab: int,
    k: int = TABLE_K,
    max_pairs: int = 1_000_000,
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """(table [src_vocab, k] int32 of target ids by falling Dice coefficient, −1 where fewer;
    frequent [FREQUENT] int32, the target ids in most sentences) from the first `max_pairs` pairs,
    `chunk` pairs at a time (memory: the distinct co-occurring pairs, plus one chunk's)."""
    n = min(len(src_offsets) - 1, max_pairs)
    src_count = np.zeros(src_vocab, np.int64)
    tgt_count = np.zeros(tgt_vocab, np.int64)
    keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        src_sent, src_piece = _sentence_sets(src_tokens, src_offsets, lo, hi, src_vocab)
        tgt_sent, tgt_piece = _sentence_sets(tgt_tokens, tgt_offsets, lo, hi, tgt_vocab)
        src_count += np.bincount(src_piece, minlength=src_vocab)
        tgt_count += np.bincount(tgt_piece, minlength=tgt_vocab)
        keys, counts = _add_counts(keys, counts, _cross(src_sent, src_piece, tgt_sent, tgt_piece, hi - lo, tgt_vocab))
    s, t = keys // tgt_vocab, keys % tgt_vocab
    dice = 2.0 * counts / (src_count[s] + tgt_count[t])
    order = np.lexsort((-dice, s))  # by source piece, then best association first
    s, t = s[order], t[order]
    start = np.searchsorted(s, np.arange(src_vocab))
    rank = np.arange(len(s)) - start[s]
    keep = rank < k
    table = np.full((src_vocab, k), -1, np.int32)
    table[s[keep], rank[keep]] = t[keep]
    frequent = np.argsort(-tgt_count, kind="stable")[:FREQUENT].astype(np.int32)
    return table, frequent


def save_lexicon(path: Path, table: np.ndarray, frequent: np.ndarray, vocab: dict) -> None:
    """shortlist.safetensors: the table, the frequent ids, and (metadata) the vocabularies it was learned with."""
    from safetensors.numpy import save_file

    save_file({"table": table, "frequent": frequent}, str(path), metadata={"aiayn_shortlist": "1", "vocab": json.dumps(vocab)})
