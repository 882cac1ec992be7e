"""`aiayn translate`: raw text in, translations out, in input order.

Lines are encoded with the model's own sentencepiece model, sorted by length and cut into
batches of at most `max_tokens` source tokens (× beam), decoded, detokenized, and put back in
input order. Empty lines give empty lines; over-long lines are truncated with a warning.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from aiayn import runtime
from aiayn.data.tokenizer import Tokenizer
from aiayn.generate.search import Hypothesis, SpecialTokens, Stop, beam_search, greedy_search, sample
from aiayn.generate.shortlist import Shortlist, Shortlisted
from aiayn.nn.int8 import for_precision


@dataclass
class Translation:
    text: str
    score: float
    tokens: list[int] = field(default_factory=list)  # output subword ids (no EOS)
    src_tokens: list[int] = field(default_factory=list)  # source subword ids as fed (no EOS)
    nbest: list[tuple[str, float]] = field(default_factory=list)  # with nbest > 1: (text, score), best first
    alignment: list[int] | None = None  # per output subword: the source subword it attends to most


def source_batch(seqs: list[list[int]], pad: int, eos: int) -> Tensor:
    """Source token ids [B, longest + 1]: each sentence followed by EOS, right-padded."""
    out = torch.full((len(seqs), max(len(s) for s in seqs) + 1), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        out[i, len(s)] = eos
    return out


def encode_lines(tokenizer: Tokenizer, texts: list[str], max_input_len: int, warn) -> list[list[int]]:
    """Subword ids of each line, truncated to max_input_len with a warning that names the line."""
    ids = tokenizer.encode(texts)
    for i, seq in enumerate(ids):
        if len(seq) > max_input_len:
            warn(f"line {i + 1}: {len(seq)} subwords, truncated to {max_input_len}")
            ids[i] = seq[:max_input_len]
    return ids


def special_tokens(model) -> SpecialTokens:
    """The ids a search needs, from an encoder-decoder's config."""
    c = model.config
    return SpecialTokens(pad=c.pad_id, eos=c.eos_id, start=c.decoder_start_id)


def output_cap(source_length: int, max_len_a: float, max_len_b: int) -> int:
    """§6.1 "maximum output length ... input length + 50": at most a·(source length) + b output
    tokens, EOS included, and at least 1. The one formula every engine uses."""
    return max(1, math.floor(max_len_a * source_length) + max_len_b)


def learned_positions(config) -> int:
    """How many positions a model's learned position table holds (0: none, as sinusoids and recurrent models)."""
    return config.max_positions if getattr(config, "positional", None) == "learned" else 0


def max_lengths(model, src: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """Per sentence of a source batch: `output_cap` ([B], long), and no more than the model's
    learned positions reach."""
    src_len = (src.ne(model.config.pad_id).sum(1) - 1).tolist()  # without the source EOS
    limit = torch.tensor([output_cap(n, max_len_a, max_len_b) for n in src_len], device=src.device)
    if positions := learned_positions(model.config):
        limit = limit.clamp(max=positions)
    return limit


@dataclass
class SearchOptions:
    beam: int = 4  # 1: greedy
    alpha: float = 0.6  # length penalty α (§6.1)
    lp_style: str = "gnmt"  # gnmt: ((5+|Y|)/6)^α (the paper) | power: |Y|^α (fairseq, Hugging Face)
    max_len_a: float = 1.0  # output ≤ a·source length + b (§6.1: input length + 50)
    max_len_b: int = 50
    min_len: int = 0  # at least this many output subwords before EOS
    nbest: int = 1
    early_stop: bool | str = False  # stopping rule: False (exact) | True (nbest) | "beam" | "hf"; see beam_search
    no_repeat_ngram: int = 0  # N > 0: no output holds the same N subwords in a row twice (0: off)
    sampling: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def with_overrides(self, **overrides) -> "SearchOptions":
        """A copy with some options changed; an unknown name is a TypeError."""
        for k in overrides:
            if not hasattr(self, k):
                raise TypeError(f"unknown search option {k!r}")
        return dataclasses.replace(self, **overrides)

    def output_cap(self, source_length: int) -> int:
        return output_cap(source_length, self.max_len_a, self.max_len_b)


class Ensemble(torch.nn.Module):
    """Several models of one vocabulary decoding together: the average of their log-probabilities."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.config = models[0].config
        for m in models[1:]:
            if special_tokens(m) != special_tokens(self) or m.config.tgt_vocab_size != self.config.tgt_vocab_size:
                raise ValueError("ensemble members need the same target vocabulary and special ids")

    def start(self, inputs: Tensor) -> "EnsembleState":
        return EnsembleState([m.start(inputs) for m in self.models])

    def restrict_output(self, state: "EnsembleState", ids: Tensor) -> None:
        for m, s in zip(self.models, state.states):
            m.restrict_output(s, ids)

    def step(self, tokens: Tensor, state: "EnsembleState") -> Tensor:
        lprobs = [m.step(tokens, s).float().log_softmax(-1) for m, s in zip(self.models, state.states)]
        return torch.stack(lprobs).mean(0)


@dataclass
class EnsembleState:
    states: list

    def reorder(self, order: Tensor) -> None:
        for s in self.states:
            s.reorder(order)

    def select(self, sentences: Tensor) -> None:
        for s in self.states:
            s.select(sentences)


class Translator:
    def __init__(
        self,
        model: torch.nn.Module | list[torch.nn.Module],
        src_tokenizer: Tokenizer,
        tgt_tokenizer: Tokenizer,
        *,
        options: SearchOptions | None = None,
        max_tokens: int | None = None,
        max_input_len: int = 0,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        cudnn_attention: bool = False,
        shortlist: Shortlist | None = None,
        warn=None,
        **option_overrides,
    ):
        models = model if isinstance(model, list) else [model]
        self.shortlist = shortlist  # restrict each batch's output vocabulary (generate.shortlist)
        self.device = runtime.device(device) if device is not None else next(models[0].parameters()).device
        self.warn = warn or (lambda message: None)
        if precision == "bf16" and self.device.type == "cpu" and not runtime.cpu_has_bf16():
            self.warn("this CPU has no bf16 units: bf16 autocast will be slower than fp32 (4x on an AVX2-only AMD EPYC)")
        resolved = [for_precision(m, precision, self.device) for m in models]  # int8: quantized copies
        models, self.precision = [m for m, _ in resolved], resolved[0][1]
        if len({p for _, p in resolved}) > 1:
            raise ValueError("an ensemble of int8 and float models: quantize them all or none")
        self.model = models[0] if len(models) == 1 else Ensemble(models)
        self.model.eval()
        self.models = models
        self.src_tok, self.tgt_tok = src_tokenizer, tgt_tokenizer
        self.options = (options or SearchOptions()).with_overrides(**option_overrides)
        cfg = models[0].config
        self.max_input_len = max_input_len or (learned_positions(cfg) - 1 if learned_positions(cfg) else 1024)
        self.max_tokens = max_tokens or runtime.default_max_tokens(self.device)
        runtime.configure_attention(self.device, cudnn_attention)  # each decoding step has a new key length

    def encode(self, texts: list[str]) -> list[list[int]]:
        return encode_lines(self.src_tok, texts, self.max_input_len, self.warn)

    def batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, cut so that sentences × (longest + 1) × beam ≤ max_tokens."""
        order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: lengths[i])
        width = 1 if self.options.sampling else self.options.beam
        batches, current, longest = [], [], 0
        for i in order:
            longest_if_added = max(longest, lengths[i] + 1)
            if current and (len(current) + 1) * longest_if_added * width > self.max_tokens:
                batches.append(current)
                current, longest_if_added = [], lengths[i] + 1
            current.append(i)
            longest = longest_if_added
        if current:
            batches.append(current)
        return batches

    def _tensor(self, seqs: list[list[int]]) -> Tensor:
        cfg = self.models[0].config
        return source_batch(seqs, cfg.pad_id, cfg.eos_id).to(self.device)

    def search(self, src: Tensor, stop: Stop = None) -> list[list[Hypothesis]]:
        special, model = special_tokens(self.model), self.model
        if self.shortlist is not None:  # the search runs over the batch's candidates, numbered 0 … n−1
            model = Shortlisted(self.model, self.shortlist.vocabulary(src, special.pad), special)
            results = self._search(model, src, model.special, stop)
            return [[dataclasses.replace(h, tokens=model.to_model_ids(h.tokens)) for h in hyps] for hyps in results]
        return self._search(model, src, special, stop)

    def _search(self, model, src: Tensor, special: SpecialTokens, stop: Stop) -> list[list[Hypothesis]]:
        o = self.options
        common = dict(
            special=special,
            max_len=max_lengths(self.models[0], src, o.max_len_a, o.max_len_b),
            min_len=o.min_len,
            alpha=o.alpha,
            lp_style=o.lp_style,
            stop=stop,
            no_repeat_ngram=o.no_repeat_ngram,
        )
        with runtime.autocast(self.precision, self.device):
            if o.sampling:
                generator = torch.Generator(device=self.device).manual_seed(o.seed)
                return [
                    [h] for h in sample(model, src, temperature=o.temperature, top_k=o.top_k, top_p=o.top_p, generator=generator, **common)
                ]
            if o.beam == 1 and o.nbest == 1:
                return [[h] for h in greedy_search(model, src, **common)]
            return beam_search(model, src, beam=o.beam, nbest=o.nbest, early_stop=o.early_stop, **common)

    def translate(self, texts: list[str], alignment_layer: int | None = None, stop: Stop = None) -> list[Translation]:
        """Translate raw sentences; alignment_layer (e.g. -1) also gives each output subword the
        source subword that layer's encoder-decoder attention (averaged over heads) weighs most.
        `stop` is asked before every decoding step; True raises generate.search.SearchCancelled (the
        server uses it to give up on a batch whose callers have all gone)."""
        n_layers = self.models[0].cross_attention_layers()
        if alignment_layer is not None and not -n_layers <= alignment_layer < n_layers:
            raise ValueError(
                f"alignment layer {alignment_layer}: the model has {n_layers} decoder layers (0 to {n_layers - 1}, or -1 for the last)"
            )
        ids = self.encode(texts)
        out: list[Translation | None] = [None] * len(texts)
        for i, seq in enumerate(ids):
            if not seq:
                out[i] = Translation("", 0.0)
        for batch in self.batches([len(s) for s in ids]):
            src = self._tensor([ids[i] for i in batch])
            results = self.search(src, stop)
            aligns = (
                self.align(src, [r[0].tokens for r in results], alignment_layer) if alignment_layer is not None else [None] * len(batch)
            )
            for i, hyps, align in zip(batch, results, aligns):
                best = hyps[0]
                out[i] = Translation(
                    self.tgt_tok.decode(best.tokens),
                    best.score,
                    best.tokens,
                    ids[i],
                    [(self.tgt_tok.decode(h.tokens), h.score) for h in hyps] if self.options.nbest > 1 else [],
                    align,
                )
        return out

    @torch.no_grad()
    def cross_attention(self, src: Tensor, outputs: list[list[int]]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Re-run the decoder over the chosen outputs (teacher forcing, the same computation as
        during search) and return the encoder-decoder attention per layer [B, h, T, S], the encoder
        self-attention per layer [B, h, S, S], and the decoder input [B, T]."""
        model = self.models[0]
        cfg = model.config
        T = max(len(o) for o in outputs) + 1
        tgt_in = torch.full((len(outputs), T), cfg.pad_id, dtype=torch.long, device=self.device)
        tgt_in[:, 0] = cfg.decoder_start_id
        for i, o in enumerate(outputs):
            tgt_in[i, 1 : len(o) + 1] = torch.tensor(o, dtype=torch.long)
        with runtime.autocast(self.precision, self.device):
            enc = model.encode(src, need_weights=True)
            _, cross = model.decode(tgt_in, enc, need_weights=True)
        return [w.float() for w in cross], [w.float() for w in enc.attention_weights], tgt_in

    def align(self, src: Tensor, outputs: list[list[int]], layer: int = -1) -> list[list[int]]:
        """Per output subword (EOS excluded), the source subword (EOS excluded) attended to most."""
        cross, _, _ = self.cross_attention(src, outputs)
        weights = cross[layer].mean(1)  # [B, T, S]: average over heads
        src_len = src.ne(self.models[0].config.pad_id).sum(1) - 1
        result = []
        for i, o in enumerate(outputs):
            w = weights[i, : len(o), : max(int(src_len[i]), 1)]  # row j: the step that produced output subword j
            result.append(w.argmax(-1).tolist())
        return result
