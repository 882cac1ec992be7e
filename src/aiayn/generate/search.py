"""Search over a model's next-token distributions: greedy, beam search (§6.1), and sampling.

Any autoregressive model can be searched: it needs `start(inputs) -> state` (e.g. encode the
sources) and `step(tokens [N, L], state) -> logits [N, V]` (the logits after the last of L new
tokens: L = 1 at every step, more for a prompt), and its state follows nn.DecodingState
(`reorder(order)`, `select(sentences)`). Special ids and per-sentence length caps are passed in.

Every search works on a whole batch of sentences at once, and beam search on all their beams
in one tensor: the only Python loop runs over output positions. Sentences that are finished
leave the batch (their state rows are dropped), so a long sentence never makes short ones pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from aiayn import runtime

NEG_INF = float("-inf")
Stop = Callable[[], bool] | None  # asked before every step; True gives up (e.g. every caller has gone)


class SearchCancelled(Exception):
    """A search gave up because its `stop()` said so."""


def _check(stop: Stop) -> None:
    if stop is not None and stop():
        raise SearchCancelled("decoding was cancelled")


@dataclass
class Hypothesis:
    tokens: list[int]  # output tokens, without the start symbol and without EOS
    score: float  # logprob / length penalty (what beam search ranks by)
    logprob: float  # sum of token log-probabilities, EOS included


def length_penalty(length: Tensor | float, alpha: float, style: str = "gnmt"):
    """§6.1 "length penalty α = 0.6" — Wu et al. (2016), GNMT: lp(Y) = ((5 + |Y|) / 6)^α.
    style="power" is |Y|^α (fairseq, Hugging Face, CTranslate2). |Y| counts EOS, never the start
    symbol: Hugging Face generate divides by (generated length)^α, EOS included, the same; CTranslate2
    leaves EOS out unless asked to return it (aiayn's ctranslate2 engine asks)."""
    if style == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if style == "power":
        return length**alpha
    raise ValueError(f"unknown length penalty style {style!r} (gnmt or power)")


@dataclass(frozen=True)
class SpecialTokens:
    pad: int  # never produced
    eos: int  # ends a hypothesis
    start: int  # the first decoder input


def _first_tokens(special: SpecialTokens, prompt: Tensor | None, n: int, rows_per: int, device) -> Tensor:
    """The decoder's first input [n·rows_per, P]: the start symbol, or a prompt [n, P] per sentence."""
    if prompt is None:
        return torch.full((n * rows_per, 1), special.start, dtype=torch.long, device=device)
    return prompt.to(device).repeat_interleave(rows_per, dim=0)


def _constrain(lprobs: Tensor, special: SpecialTokens, before_min_len: bool, at_cap: Tensor | None) -> None:
    """What each row may produce next, in place: never padding; no EOS before min_len; only EOS in
    the rows at their length cap (`at_cap`, [rows] bool, or None where no row is)."""
    lprobs[:, special.pad] = NEG_INF
    if before_min_len:
        lprobs[:, special.eos] = NEG_INF
    if at_cap is not None:
        eos = lprobs[:, special.eos].clone()
        lprobs.masked_fill_(at_cap[:, None], NEG_INF)
        lprobs[:, special.eos] = torch.where(at_cap, eos, lprobs[:, special.eos])


def ban_repeated_ngrams(lprobs: Tensor, tokens: Tensor, n: int, pad: int) -> None:
    """No n-gram twice in one output (fairseq's --no-repeat-ngram-size, Hugging Face's
    no_repeat_ngram_size), in place: where a row's last n − 1 tokens ([rows, t] so far) occurred
    before, the token that followed them then may not come next. n = 0: off."""
    t = tokens.size(1)
    if n <= 0 or t < n:
        return
    if n == 1:
        lprobs.scatter_(1, tokens, NEG_INF)
        return
    prefixes = tokens.unfold(1, n - 1, 1)  # [rows, t − n + 2, n − 1]: every (n − 1)-gram, the last one the row's suffix
    seen = (prefixes[:, :-1] == prefixes[:, -1:]).all(-1)  # [rows, t − n + 1]: an earlier (n − 1)-gram equal to the suffix
    lprobs.scatter_(1, tokens[:, n - 1 :].masked_fill(~seen, pad), NEG_INF)  # pad is never allowed anyway


Adjust = Callable[[Tensor, Tensor, Tensor], Tensor] | None  # (logits [n, V], active rows [n], tokens so far [B, t]) -> logits
OnStep = Callable[[Tensor, Tensor], Tensor | None] | None  # (active rows [n], their new tokens [n]) -> rows that are done, or None


@torch.no_grad()
def greedy_search(model, inputs, *, special: SpecialTokens, max_len: Tensor, **options) -> list[Hypothesis]:
    """Take the most probable token at each step until EOS or the sentence's cap `max_len` ([B], EOS
    included). options: those of `_one_per_sentence` (alpha, min_len, prompt, no_repeat_ngram, ...)."""
    return _one_per_sentence(model, inputs, lambda lprobs: lprobs.argmax(-1), special=special, max_len=max_len, **options)


def sampling_filter(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> Tensor:
    """The logits to draw from: divided by the temperature, then cut (to -inf) outside the top_k
    tokens, outside the smallest set whose probability reaches top_p (nucleus sampling, Holtzman et
    al. 2019), and below min_p times the most probable token's probability (Nguyen et al. 2024)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy search for temperature 0)")
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, NEG_INF))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, NEG_INF)
    return logits


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Keskar et al. 2019 (CTRL), as Hugging Face applies it: the logit of every token already in
    the row (`seen` [n, t], ids; negative ids are ignored) is divided by `penalty` where positive,
    multiplied where negative — less likely either way for penalty > 1."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    counts = torch.zeros(logits.shape, dtype=torch.int32, device=logits.device)
    counts.scatter_add_(1, seen.clamp(min=0), seen.ge(0).int())
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(counts > 0, penalized, logits)


@torch.no_grad()
def sample(
    model,
    inputs,
    *,
    special: SpecialTokens,
    max_len: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
    **options,
) -> list[Hypothesis]:
    """Draw each token from the model's distribution, filtered by `sampling_filter`. The
    log-probabilities reported are the model's own (before temperature and cuts). options: those
    of `_one_per_sentence`, as for greedy_search."""
    sampling_filter(torch.zeros(1, 1), temperature)  # checks the temperature before any work

    def pick(lprobs: Tensor) -> Tensor:
        logits = sampling_filter(lprobs, temperature, top_k, top_p, min_p)
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)

    return _one_per_sentence(model, inputs, pick, special=special, max_len=max_len, **options)


def _one_per_sentence(
    model,
    inputs,
    pick: Callable[[Tensor], Tensor],
    *,
    special: SpecialTokens,
    max_len: Tensor,
    alpha: float = 0.0,
    lp_style: str = "gnmt",
    min_len: int = 0,
    prompt: Tensor | None = None,
    stop: Stop = None,
    eos_at_cap: bool = True,
    adjust: Adjust = None,
    on_step: OnStep = None,
    sync_every: int | None = None,
    no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """Greedy search and sampling: one hypothesis per sentence, extended by `pick` (argmax or a draw:
    [n, V] log-probabilities -> [n] tokens) until EOS, until its cap `max_len` ([B], EOS included;
    EOS is forced there, unless eos_at_cap=False: a language model's text just stops), or until
    `on_step` says the row is done. No EOS before min_len; with no_repeat_ngram N > 0 never the same
    N-gram twice (ban_repeated_ngrams); the score is the log-probability over the length penalty
    (alpha, lp_style).

    Which rows are done is kept on the device (a mask; finished rows go on being computed, their
    tokens ignored); every `sync_every` steps (runtime.search_sync_every: every step on a CPU, 8 on
    a GPU) the host asks whether any row is done, and drops those rows from the batch and state."""
    B, device = max_len.size(0), max_len.device
    sync_every = sync_every or runtime.search_sync_every(device)
    state = model.start(inputs)
    active = torch.arange(B, device=device)
    token = _first_tokens(special, prompt, B, 1, device)
    T = int(max_len.max())
    out = torch.full((B, T), special.pad, dtype=torch.long, device=device)
    logprob = torch.zeros(B, dtype=torch.float64, device=device)
    length = torch.full((B,), T, dtype=torch.long, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)  # by EOS (which the hypothesis leaves out)
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # per active row: done, not yet dropped
    row_limit, first_cap = max_len, int(max_len.min())  # the caps of the active rows; the earliest (known on the host)
    for t in range(T):
        _check(stop)
        logits = model.step(token, state).float()  # [n, V]
        if adjust is not None:
            logits = adjust(logits, active, out[:, :t])
        lprobs = logits.log_softmax(-1)
        capped = t + 1 >= first_cap  # some row is at its cap: check which (else no row is, without asking the device)
        at_cap = row_limit <= t + 1 if capped else None
        _constrain(lprobs, special, t < min_len, at_cap if eos_at_cap else None)
        if no_repeat_ngram:
            ban_repeated_ngrams(lprobs, out[:, :t] if active.numel() == B else out[active, :t], no_repeat_ngram, special.pad)
        picked = pick(lprobs)
        gained = lprobs.gather(1, picked[:, None]).squeeze(1).double()
        if sync_every > 1:  # rows already done keep their results
            picked = picked.masked_fill(finished, special.pad)
            gained = gained.masked_fill(finished, 0.0)
        if active.numel() == B:  # every row still in the batch: plain column writes
            out[:, t] = picked
            logprob += gained
        else:
            out[active, t] = picked
            logprob[active] += gained
        done = picked.eq(special.eos)
        if at_cap is not None:
            done = done | at_cap
        if on_step is not None and (more := on_step(active, picked)) is not None:
            done = done | more
        newly = done & ~finished
        length[active] = torch.where(newly, t + 1, length[active])
        ended[active] = torch.where(newly, picked.eq(special.eos), ended[active])
        finished = finished | done
        token = picked[:, None]
        if (t + 1) % sync_every == 0 or t + 1 == T:
            if finished.any():  # a host synchronisation: every sync_every steps
                keep = (~finished).nonzero().squeeze(1)
                if not len(keep):
                    break
                active, token, row_limit, finished = active[keep], token[keep], row_limit[keep], finished[keep]
                first_cap = int(row_limit.min())
                state.select(keep)
    lp = length_penalty(length.double(), alpha, lp_style)
    return [Hypothesis(out[i, : length[i] - int(ended[i])].tolist(), (logprob[i] / lp[i]).item(), logprob[i].item()) for i in range(B)]


STOPPING = {False: "exact", True: "nbest", "exact": "exact", "nbest": "nbest", "beam": "beam", "hf": "hf"}


def best_per_row(x: Tensor, k: int, block: int = 32) -> tuple[Tensor, Tensor]:
    """x.topk(k, dim=1) (values best first, and their columns), in two stages where
    `runtime.two_stage_topk` says so (a large vocabulary on a CPU): each row's k best blocks of
    `block` columns by their maxima, then the k best entries of those blocks (and of the columns
    left over after the last whole block). Exact, ties aside: a block holding one of the row's k
    best entries has a maximum at least that large, and only a block holding a larger entry can
    have a larger maximum, of which there are fewer than k."""
    n, V = x.shape
    whole = V - V % block
    if not runtime.two_stage_topk(x) or whole // block < 4 * k:
        return x.topk(k, dim=1)
    blocks = x[:, :whole].unflatten(1, (whole // block, block))  # [n, V/block, block]
    chosen = blocks.amax(2).topk(k, dim=1).indices  # [n, k]
    candidates = torch.cat([blocks.gather(1, chosen[:, :, None].expand(n, k, block)).flatten(1), x[:, whole:]], 1)
    top, at = candidates.topk(k, dim=1)
    in_block = chosen.gather(1, (at // block).clamp(max=k - 1)) * block + at % block
    return top, torch.where(at < k * block, in_block, whole + at - k * block)


def _slots(parent: Tensor) -> Tensor:
    """Rows for the K surviving hypotheses of each sentence, given their parents' rows [n, K]:
    the first survivor of each parent stays in its parent's row (no cache copy), the others go
    to the rows whose parents left no survivor, in order."""
    n, K = parent.shape
    earlier = torch.ones(K, K, dtype=torch.bool, device=parent.device).tril(-1)  # [j, i]: i < j
    repeat = ((parent[:, :, None] == parent[:, None, :]) & earlier).any(2)  # an earlier survivor has this parent
    taken = torch.zeros(n, K + 1, dtype=torch.bool, device=parent.device).scatter_(1, parent.masked_fill(repeat, K), True)[:, :K]
    free = (~taken).to(torch.int8).sort(dim=1, descending=True, stable=True).indices  # rows left free, in order
    rank = (repeat.cumsum(1) - 1).clamp(min=0)
    return torch.where(repeat, free.gather(1, rank), parent)


@torch.no_grad()
def beam_search(
    model,
    inputs,
    *,
    special: SpecialTokens,
    max_len: Tensor,
    beam: int = 4,
    alpha: float = 0.6,
    lp_style: str = "gnmt",
    nbest: int = 1,
    early_stop: bool | str = False,
    min_len: int = 0,
    prompt: Tensor | None = None,
    stop: Stop = None,
    sync_every: int | None = None,
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """Beam search with length penalty (§6.1: beam size 4, α = 0.6), batched over sentences and beams.

    Each step extends the `beam` live hypotheses of every sentence, keeps the 2·beam best
    candidates, moves those that end in EOS (among the best `beam`) to the sentence's pool of
    finished hypotheses (scored logprob / lp), and continues with the best `beam` others.
    When a sentence is done depends on `early_stop`:

    False ("exact"): its pool holds `nbest` hypotheses and no live one can still beat them: a live
        hypothesis's log-probability only falls, so its best reachable score is logprob / max(lp)
        over the lengths still allowed. (Hugging Face generate with early_stopping="never" finds the
        same hypotheses, except where one reaches the length cap: see "hf".)
    True ("nbest"): as soon as the pool holds `nbest` hypotheses.
    "beam": as soon as `beam` hypotheses have finished (the pool keeps the best `beam`), as Hugging Face
        generate with early_stopping=True, fairseq, and CTranslate2 whenever α ≠ 0 (the same
        hypotheses, except at the length cap).
    "hf": Hugging Face generate's default (early_stopping=False), for identical results: the pool
        keeps `beam` hypotheses and the sentence is done once it is full and the best live
        hypothesis, scored at its current length (logprob / lp(t)), does not beat the worst of
        them — a heuristic, not a bound. At the length cap EOS is forced with log-probability 0,
        as HF's forced_eos_token_id does (set in every Marian config).
    `no_repeat_ngram` N > 0: no hypothesis holds the same N-gram twice (ban_repeated_ngrams).
    `max_len` ([B]) caps each sentence's output, EOS included; `prompt` ([B, P]) replaces the start
    symbol as the first decoder input (a prefill). Returns, per sentence, `nbest` hypotheses, best
    first. `stop` (any search) is asked before every step; when it says True the search raises
    SearchCancelled. Done sentences are marked on the device, their pools frozen, and dropped from
    the batch every `sync_every` steps (runtime.search_sync_every: every step on a CPU).
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and the beam size ({beam}), got {nbest}")
    if early_stop not in STOPPING:
        raise ValueError(f"unknown stopping rule {early_stop!r} (False/'exact', True/'nbest', 'beam' or 'hf')")
    stopping = STOPPING[early_stop]
    pool_size = beam if stopping in ("beam", "hf") else nbest
    limit = max_len  # [B]
    B, K, device = limit.size(0), beam, limit.device
    sync_every = sync_every or runtime.search_sync_every(device)
    state = model.start(inputs)  # e.g. the encoder's keys/values, once per sentence, never per beam
    T, first_cap = int(max_len.max()), int(max_len.min())
    active = torch.arange(B, device=device)  # original index of each sentence still being decoded
    scores = torch.full((B, K), NEG_INF, device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first one may expand at step 0
    hyps = torch.empty((B * K, 0), dtype=torch.long, device=device)  # tokens so far
    token = _first_tokens(special, prompt, B, K, device)
    pool_score = torch.full((B, pool_size), NEG_INF, device=device)  # finished hypotheses, best first
    pool_logp = torch.zeros((B, pool_size), device=device)
    pool_tokens = torch.full((B, pool_size, T), special.pad, dtype=torch.long, device=device)
    pool_len = torch.zeros((B, pool_size), dtype=torch.long, device=device)
    result = [None] * B
    sentence_done = torch.zeros(B, dtype=torch.bool, device=device)  # per active sentence: done, pool frozen

    def finish(rows: Tensor) -> None:
        for r in rows.tolist():  # bookkeeping per finished sentence: no model work here
            result[active[r].item()] = [
                Hypothesis(pool_tokens[r, j, : pool_len[r, j] - 1].tolist(), pool_score[r, j].item(), pool_logp[r, j].item())
                for j in range(nbest)
                if pool_score[r, j] > NEG_INF
            ]

    for t in range(T):
        _check(stop)
        n = active.numel()
        lprobs = model.step(token, state).float().log_softmax(-1)  # [n·K, V]
        V = lprobs.size(1)
        # the rows at their length cap (None while no row is: the earliest cap is known on the host)
        at_cap = (t + 1 >= limit[active]).repeat_interleave(K) if t + 1 >= first_cap else None
        _constrain(lprobs, special, t < min_len, at_cap)
        if no_repeat_ngram:
            ban_repeated_ngrams(lprobs, hyps, no_repeat_ngram, special.pad)
        if stopping == "hf" and at_cap is not None:  # HF's ForcedEOSTokenLogitsProcessor gives the forced EOS log-probability 0
            lprobs[:, special.eos] = torch.where(at_cap, 0.0, lprobs[:, special.eos])
        # the best 2K of a sentence's K·V candidates are among the best 2K continuations of each of its
        # hypotheses (its score is the same for all of them): add the scores to those alone
        each_top, each_token = best_per_row(lprobs, min(2 * K, V))  # [n·K, k]
        k = each_top.size(1)
        top, flat = (scores[:, :, None] + each_top.view(n, K, k)).view(n, K * k).topk(2 * K, dim=1)  # [n, 2K], best first
        from_beam, new_token = flat // k, each_token.view(n, K * k).gather(1, flat)
        is_eos = new_token.eq(special.eos)

        # finished candidates (EOS among the best K) join the pool
        ends = is_eos & (torch.arange(2 * K, device=device) < K) & top.gt(NEG_INF) & ~sentence_done[:, None]
        if sync_every > 1 or ends.any():  # (on a GPU without asking: the update is a no-op where nothing ends)
            length = t + 1
            prefix = hyps.view(n, K, t).gather(1, from_beam[:, :, None].expand(n, 2 * K, t))  # [n, 2K, t]
            new_tokens = torch.cat(
                [prefix, new_token[:, :, None], torch.full((n, 2 * K, T - t - 1), special.pad, dtype=torch.long, device=device)], 2
            )
            new_score = torch.where(ends, top / length_penalty(float(length), alpha, lp_style), NEG_INF)
            all_score = torch.cat([pool_score, new_score], 1)  # [n, pool_size + 2K]
            pool_score, pick = all_score.topk(pool_size, dim=1)
            pool_logp = torch.cat([pool_logp, top], 1).gather(1, pick)
            pool_len = torch.cat([pool_len, torch.full((n, 2 * K), length, device=device)], 1).gather(1, pick)
            pool_tokens = torch.cat([pool_tokens, new_tokens], 1).gather(1, pick[:, :, None].expand(n, pool_size, T))

        # the best K candidates that do not end continue, each in its parent's row where it can
        live_score, pick = top.masked_fill(is_eos, NEG_INF).topk(K, dim=1)  # [n, K]
        parent = from_beam.gather(1, pick)
        slot = _slots(parent)
        scores = torch.empty_like(live_score).scatter_(1, slot, live_score)
        token = torch.empty_like(parent).scatter_(1, slot, new_token.gather(1, pick)).view(-1, 1)
        order = (torch.empty_like(parent).scatter_(1, slot, parent) + K * torch.arange(n, device=device)[:, None]).view(-1)
        hyps = torch.cat([hyps[order], token], 1)
        if t + 1 < T:  # (after the last step no hypothesis goes on: nothing to move)
            state.reorder(order)  # copies only the rows whose hypothesis changed

        # which sentences are done?
        full = pool_score[:, -1].gt(NEG_INF)
        if stopping in ("nbest", "beam"):
            done = full
        elif stopping == "hf":  # HF's _check_early_stop_heuristic: the best live score at its current length
            done = full & (pool_score[:, -1] >= scores.max(1).values / length_penalty(float(t + 1), alpha, lp_style))
        else:
            remaining = limit[active]  # the best reachable score of a live hypothesis
            best_lp = torch.maximum(
                length_penalty(torch.full_like(remaining, t + 2).double(), alpha, lp_style),
                length_penalty(remaining.double(), alpha, lp_style),
            ).float()
            bound = scores.max(1).values / best_lp
            done = full & (pool_score[:, -1] >= bound)
        done |= scores.max(1).values.eq(NEG_INF) | (t + 1 >= limit[active])
        sentence_done = sentence_done | done
        if ((t + 1) % sync_every == 0 or t + 1 == T) and sentence_done.any():  # a host synchronisation
            finish(sentence_done.nonzero().squeeze(1))
            keep = (~sentence_done).nonzero().squeeze(1)
            if not keep.numel():
                break
            rows = (keep[:, None] * K + torch.arange(K, device=device)).view(-1)
            active, scores, hyps, token = active[keep], scores[keep], hyps[rows], token[rows]
            pool_score, pool_logp, pool_len, pool_tokens = pool_score[keep], pool_logp[keep], pool_len[keep], pool_tokens[keep]
            sentence_done = sentence_done[keep]
            first_cap = int(limit[active].min())
            state.select(keep)
    return result
