"""Decoding: greedy, beam search and sampling; translation of raw text; evaluation; attention maps."""

import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from aiayn.generate import Translator, beam_search, greedy_search, length_penalty, max_lengths, sample, special_tokens

PAD, UNK, BOS, EOS = 0, 1, 2, 3


@pytest.fixture(scope="module")
def sources(trained, shipped):
    _, ckpt = trained
    texts = shipped["test"][0].read_text().splitlines()[:24]
    return texts, ckpt.src_tokenizer


def as_batch(seqs, pad=PAD, eos=EOS):
    out = torch.full((len(seqs), max(len(s) for s in seqs) + 1), pad)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
        out[i, len(s)] = eos
    return out


def forced_logprob(model, src_row, tokens):
    """Sum of log p(token) over tokens + EOS, by teacher forcing the full (uncached) model."""
    tgt_in = torch.tensor([[model.config.decoder_start_id] + tokens])
    lprobs = model(src_row[None], tgt_in)[0].log_softmax(-1)
    target = tokens + [model.config.eos_id]
    return sum(lprobs[i, t].item() for i, t in enumerate(target))


def limits(model, src, max_len_a=1.0, max_len_b=50):
    """What a search is given besides the model: its special ids and each sentence's length cap."""
    return dict(special=special_tokens(model), max_len=max_lengths(model, src, max_len_a, max_len_b))


def run_greedy(model, src, max_len_a=1.0, max_len_b=50, **kw):
    return greedy_search(model, src, **limits(model, src, max_len_a, max_len_b), **kw)


def run_beam(model, src, max_len_a=1.0, max_len_b=50, **kw):
    return beam_search(model, src, **limits(model, src, max_len_a, max_len_b), **kw)


def run_sample(model, src, max_len_a=1.0, max_len_b=50, **kw):
    return sample(model, src, **limits(model, src, max_len_a, max_len_b), **kw)


# ---------------------------------------------------------------- search
def test_length_penalty_is_gnmt():
    assert length_penalty(10.0, 0.6) == pytest.approx(((5 + 10) / 6) ** 0.6)
    assert length_penalty(10.0, 0.0) == 1.0
    assert length_penalty(10.0, 0.6, "power") == pytest.approx(10**0.6)


def test_beam_one_equals_greedy(trained, sources):
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts))
    greedy = run_greedy(model, src)
    exact = run_beam(model, src, beam=1, alpha=0.0)  # no length penalty: nothing can beat a finished greedy step
    early = run_beam(model, src, beam=1, alpha=0.6, early_stop=True)
    assert [g.tokens for g in greedy] == [b[0].tokens for b in exact] == [b[0].tokens for b in early]
    for g, b in zip(greedy, exact):
        assert g.logprob == pytest.approx(b[0].logprob, rel=1e-5, abs=1e-4)
    # with α = 0.6 and exact stopping, beam 1 may search further, and never scores worse than greedy
    searched = run_beam(model, src, beam=1, alpha=0.6)
    for g, b in zip(greedy, searched):
        greedy_score = g.logprob / length_penalty(len(g.tokens) + 1.0, 0.6)
        assert b[0].score >= greedy_score - 1e-4


def test_scores_are_normalised_log_probabilities(trained, sources):
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts[:6]))
    results = run_beam(model, src, beam=4, alpha=0.6, nbest=3)
    for row, hyps in zip(src, results):
        assert len(hyps) == 3 and hyps[0].score >= hyps[1].score >= hyps[2].score
        assert len({tuple(h.tokens) for h in hyps}) == 3
        for h in hyps:
            logprob = forced_logprob(model, row, h.tokens)
            assert h.logprob == pytest.approx(logprob, rel=1e-4, abs=1e-3)
            assert h.score == pytest.approx(logprob / (((5 + len(h.tokens) + 1) / 6) ** 0.6), rel=1e-4, abs=1e-3)


@dataclass
class ScriptedConfig:
    tgt_vocab_size: int = 8
    pad_id: int = PAD
    eos_id: int = EOS
    decoder_start_id: int = BOS
    positional: str = "sinusoidal"
    max_positions: int = 1024


class ScriptedCache:
    def __init__(self, n):
        self.prefix = [[] for _ in range(n)]

    def reorder(self, order):
        self.prefix = [list(self.prefix[i]) for i in order.tolist()]

    def select(self, sentences):
        group = len(self.prefix) // self.n_sentences
        self.prefix = [self.prefix[s * group + g] for s in sentences.tolist() for g in range(group)]
        self.n_sentences = len(sentences)


class ScriptedModel:
    """Next-token probabilities given by a table on the prefix: the best sequence is known."""

    config = ScriptedConfig()

    def __init__(self, table):
        self.table = table  # prefix tuple -> {token: prob}

    def start(self, src):
        cache = ScriptedCache(0)
        cache.n_sentences = src.size(0)
        return cache

    def step(self, tokens, cache):
        if not cache.prefix:
            cache.prefix = [[] for _ in range(tokens.size(0))]
        logits = torch.full((tokens.size(0), self.config.tgt_vocab_size), -30.0)
        for row, token in enumerate(tokens[:, -1].tolist()):
            if token != BOS:
                cache.prefix[row].append(token)
            dist = self.table.get(tuple(cache.prefix[row]), {EOS: 1.0})
            for t, p in dist.items():
                logits[row, t] = math.log(p)
        return logits


def test_beam_search_finds_what_greedy_misses():
    A, B, C = 4, 5, 6
    table = {
        (): {A: 0.6, B: 0.4},
        (A,): {A: 0.25, B: 0.25, C: 0.25, EOS: 0.25},  # greedy's path: 0.6 · 0.25 at best
        (B,): {EOS: 0.99, C: 0.01},  # the best sequence: B, EOS with probability 0.396
    }
    model = ScriptedModel(table)
    src = torch.tensor([[7, EOS], [7, EOS]])
    greedy = run_greedy(model, src, max_len_b=5)
    assert greedy[0].tokens[0] == A
    best = run_beam(model, src, beam=2, alpha=0.0, max_len_b=5)
    assert best[0][0].tokens == [B] and best[1][0].tokens == [B]
    assert best[0][0].logprob == pytest.approx(math.log(0.4 * 0.99), abs=1e-5)
    assert greedy[0].logprob < best[0][0].logprob


def test_ban_repeated_ngrams_bans_what_would_complete_an_earlier_ngram():
    from aiayn.generate.search import NEG_INF, ban_repeated_ngrams

    def banned(tokens, n):
        lprobs = torch.zeros(1, 8)
        ban_repeated_ngrams(lprobs, torch.tensor([tokens]), n, PAD)
        return {i for i in range(8) if lprobs[0, i] == NEG_INF} - {PAD}

    assert banned([4, 5, 4], 2) == {5}  # (4, 5) again
    assert banned([4, 5, 6, 4, 5], 3) == {6}  # (4, 5, 6) again
    assert banned([4, 5, 6, 4, 5], 2) == {6}  # after 5 came 6 before
    assert banned([4, 5, 6], 2) == set() and banned([4, 4], 3) == set() and banned([], 2) == set()
    assert banned([4, 5, 4], 1) == {4, 5}
    assert banned([4, 5, 4], 0) == set()


class LoopTable:
    """A model that would say A B A B … forever: after A mostly B, after B mostly A."""

    A, B, C = 4, 5, 6

    def get(self, prefix, default):
        if not prefix:
            return {self.A: 1.0}
        return {
            self.A: {self.B: 0.6, self.C: 0.25, EOS: 0.15},
            self.B: {self.A: 0.6, self.C: 0.25, EOS: 0.15},
            self.C: {self.A: 0.5, self.B: 0.3, EOS: 0.2},
        }[prefix[-1]]


def test_no_repeat_ngram_ends_a_loop_in_every_search():
    def repeats(tokens, n):
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return len(grams) != len(set(grams))

    model, src = ScriptedModel(LoopTable()), torch.tensor([[7] * 12 + [EOS], [7] * 12 + [EOS]])
    A, B, C = LoopTable.A, LoopTable.B, LoopTable.C
    looping = run_greedy(model, src, max_len_b=5)[0].tokens
    assert looping[:6] == [A, B, A, B, A, B] and repeats(looping, 2)
    assert run_greedy(model, src, max_len_b=5, no_repeat_ngram=2)[0].tokens == [A, B, A, C, A]
    assert not repeats(run_greedy(model, src, max_len_b=5, no_repeat_ngram=3)[0].tokens, 3)
    for hyp in run_beam(model, src, beam=3, alpha=0.0, max_len_b=5, nbest=3, no_repeat_ngram=2)[0]:
        assert not repeats(hyp.tokens, 2)
    generator = torch.Generator().manual_seed(0)
    for hyp in run_sample(model, src, max_len_b=5, no_repeat_ngram=2, generator=generator):
        assert not repeats(hyp.tokens, 2)


def test_finished_hypotheses_wait_until_nothing_can_beat_them():
    """A short finished hypothesis must not win while a longer live one can still score higher
    under the length penalty; early_stop stops at the first full pool instead."""
    A, B = 4, 5
    table = {(): {EOS: 0.55, A: 0.45}, (A,): {B: 1.0}, (A, B): {EOS: 1.0}}
    model = ScriptedModel(table)
    src = torch.tensor([[7, EOS]])
    exact = run_beam(model, src, beam=1, alpha=2.0, max_len_b=5)[0][0]
    early = run_beam(model, src, beam=1, alpha=2.0, max_len_b=5, early_stop=True)[0][0]
    # [] scores log .55 / lp(1); [A, B] scores log .45 / lp(3): higher with α = 2
    assert exact.tokens == [A, B] and early.tokens == []
    assert exact.score == pytest.approx(math.log(0.45) / ((5 + 3) / 6) ** 2.0, abs=1e-5)


def test_length_cap(trained, sources):
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts[:8]))
    src_len = src.ne(PAD).sum(1) - 1
    for hyps in (
        run_greedy(model, src, max_len_a=0.5, max_len_b=2),
        [h[0] for h in run_beam(model, src, beam=3, max_len_a=0.5, max_len_b=2)],
    ):
        for h, n in zip(hyps, src_len.tolist()):
            assert len(h.tokens) + 1 <= int(0.5 * n) + 2


def test_batched_equals_one_by_one(trained, sources):
    model, _ = trained
    texts, tok = sources
    ids = tok.encode(texts)
    batch = run_beam(model, as_batch(ids), beam=4)
    for seq, hyps in zip(ids, batch):
        alone = run_beam(model, as_batch([seq]), beam=4)[0]
        assert alone[0].tokens == hyps[0].tokens
        assert alone[0].score == pytest.approx(hyps[0].score, rel=1e-5, abs=1e-4)
    greedy = run_greedy(model, as_batch(ids))
    assert [g.tokens for g in greedy] == [run_greedy(model, as_batch([s]))[0].tokens for s in ids]


class Uncached(torch.nn.Module):
    """The same model without a KV cache: every step re-runs the decoder over the whole prefix."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def start(self, src):
        return UncachedState(self.inner.encode(src), None)

    def step(self, tokens, state):
        state.prefix = tokens if state.prefix is None else torch.cat([state.prefix, tokens], 1)
        group = state.prefix.size(0) // state.enc.states.size(0)
        enc = type(state.enc)(state.enc.states.repeat_interleave(group, 0), state.enc.mask.repeat_interleave(group, 0))
        hidden, _ = self.inner.decode(state.prefix, enc)
        return self.inner.project(hidden[:, -1])


@dataclass
class UncachedState:
    enc: object
    prefix: torch.Tensor | None

    def reorder(self, order):
        self.prefix = self.prefix[order]

    def select(self, sentences):
        group = self.prefix.size(0) // self.enc.states.size(0)
        rows = (sentences[:, None] * group + torch.arange(group)).view(-1)
        self.prefix = self.prefix[rows]
        self.enc = type(self.enc)(self.enc.states[sentences], self.enc.mask[sentences])


def test_cached_and_uncached_decoding_agree(trained, sources):
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts[:10]))
    cached = run_beam(model, src, beam=4, nbest=2)
    uncached = run_beam(Uncached(model), src, beam=4, nbest=2)
    assert [[h.tokens for h in hs] for hs in cached] == [[h.tokens for h in hs] for hs in uncached]
    for a, b in zip(cached, uncached):
        assert a[0].score == pytest.approx(b[0].score, rel=1e-5, abs=1e-4)
    assert [h.tokens for h in run_greedy(model, src)] == [h.tokens for h in run_greedy(Uncached(model), src)]


def test_a_prompt_is_prefilled_and_continued(trained, sources):
    """prompt= feeds given first tokens at once (a prefill): greedy and beam search continue them as
    they would have continued their own output."""
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts[:8]))
    full = [h.tokens for h in run_greedy(model, src)]
    keep = [i for i, t in enumerate(full) if len(t) >= 3]
    assert len(keep) >= 4
    src = src[keep]
    prompt = torch.tensor([[model.config.decoder_start_id] + full[i][:2] for i in keep])
    cap = torch.tensor([len(full[i]) - 2 + 1 for i in keep])  # the rest of the output, and EOS
    limits = dict(special=special_tokens(model), max_len=cap, prompt=prompt)
    assert [h.tokens for h in greedy_search(model, src, **limits)] == [full[i][2:] for i in keep]
    assert [h[0].tokens for h in beam_search(model, src, beam=1, alpha=0.0, **limits)] == [full[i][2:] for i in keep]
    assert all(h[0].tokens for h in beam_search(model, src, beam=4, **limits))


def test_sampling_is_seeded_and_top_k_1_is_greedy(trained, sources):
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts[:6]))
    draw = lambda seed, **kw: [h.tokens for h in run_sample(model, src, generator=torch.Generator().manual_seed(seed), **kw)]  # noqa: E731
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert draw(3, top_k=1) == [h.tokens for h in run_greedy(model, src)]
    assert draw(3, top_p=1e-6) == [h.tokens for h in run_greedy(model, src)]
    assert draw(4, temperature=0.7, top_k=5, top_p=0.9)  # runs


# ---------------------------------------------------------------- translating text
def test_translate_keeps_order_empty_lines_and_warns_on_long_lines(trained, sources):
    model, ckpt = trained
    texts, _ = sources
    warnings = []
    tr = Translator(model, *ckpt.tokenizers, beam=4, max_tokens=300, max_input_len=40, warn=warnings.append)
    inputs = texts[:10] + ["", "   "] + texts[10:14] + ["ünïcödé ✓ 漢字 Ω"]
    out = tr.translate(inputs)
    assert len(out) == len(inputs)
    assert out[10].text == "" and out[11].text == ""
    one_by_one = Translator(model, *ckpt.tokenizers, beam=4, max_tokens=100000, max_input_len=40)
    for text, result in zip(inputs, out):
        if text.strip():
            assert one_by_one.translate([text])[0].text == result.text
    long_lines = [i + 1 for i, t in enumerate(inputs) if len(ckpt.src_tokenizer.encode([t])[0]) > 40]
    assert long_lines and all(any(f"line {n}:" in w for w in warnings) for n in long_lines)
    assert len(tr.batches([5, 50, 3, 0, 7])) >= 1 and 3 not in sum(tr.batches([5, 50, 3, 0, 7]), [])  # empty lines never decoded


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_on_a_cpu_without_bf16_units_warns(trained, monkeypatch, has_bf16):
    from aiayn import runtime

    model, ckpt = trained
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    warnings = []
    Translator(model, *ckpt.tokenizers, precision="bf16", device="cpu", warn=warnings.append)
    Translator(model, *ckpt.tokenizers, precision="fp32", device="cpu", warn=warnings.append)
    assert (warnings == []) == has_bf16 and all("no bf16 units" in w for w in warnings)


def test_ensemble_of_one_model_twice_is_that_model(trained, sources):
    model, ckpt = trained
    texts, _ = sources
    single = Translator(model, *ckpt.tokenizers, beam=4).translate(texts[:8])
    double = Translator([model, model], *ckpt.tokenizers, beam=4).translate(texts[:8])
    assert [t.text for t in single] == [t.text for t in double]


def test_alignment_points_into_the_source(trained, sources):
    model, ckpt = trained
    texts, _ = sources
    out = Translator(model, *ckpt.tokenizers, beam=4).translate(texts[:5], alignment_layer=-1)
    for t in out:
        assert len(t.alignment) == len(t.tokens)
        assert all(0 <= s < len(t.src_tokens) for s in t.alignment)


# ---------------------------------------------------------------- command line
def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "aiayn", *map(str, args)], capture_output=True, text=True, **kw)


def test_translate_and_evaluate_commands(trained_run, shipped, tmp_path):
    src, ref = shipped["test"]
    lines = src.read_text().splitlines()[:30]
    refs = ref.read_text().splitlines()[:30]
    (tmp_path / "in.en").write_text("\n".join(lines[:20] + [""] + lines[20:]) + "\n")
    (tmp_path / "ref.es").write_text("\n".join(refs[:20] + [""] + refs[20:]) + "\n")
    result = run(
        "translate", "--model", trained_run, "--input", tmp_path / "in.en", "--output", tmp_path / "out.es", "--ref", tmp_path / "ref.es"
    )
    assert result.returncode == 0, result.stderr
    hyps = (tmp_path / "out.es").read_text().split("\n")[:-1]
    assert len(hyps) == 31 and hyps[20] == ""
    assert "BLEU" in result.stderr and "nrefs:1|case:mixed|eff:no|tok:13a" in result.stderr
    scored = run("evaluate", "--hyp", tmp_path / "out.es", "--ref", tmp_path / "ref.es", "--json")
    assert scored.returncode == 0 and '"bleu"' in scored.stdout
    # stdin to stdout, n-best and alignments
    piped = run("translate", "--model", trained_run, "--nbest", 2, "--beam", 3, input="In the beginning\n")
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 2 and "\t" in piped.stdout
    aligned = run("translate", "--model", trained_run, "--print-alignment", input="And God said\n")
    text, pairs = aligned.stdout.rstrip("\n").split("\t")
    assert all("-" in p for p in pairs.split())
    mismatch = run("evaluate", "--hyp", tmp_path / "out.es", "--ref", src)
    assert mismatch.returncode == 2 and "lines" in mismatch.stderr and "Traceback" not in mismatch.stderr


# ---------------------------------------------------------------- attention maps
def count_panels(png_path) -> int:
    """Count the heat-map panels in an image: connected regions of saturated (colormap) pixels."""
    import matplotlib.image

    img = matplotlib.image.imread(str(png_path))[..., :3]
    spread = img.max(-1) - img.min(-1)
    mask = spread > 0.15  # viridis colours; text, axes and background are grey
    h, w = mask.shape
    seen = np.zeros_like(mask)
    panels = 0
    for y in range(0, h, 2):
        for x in range(0, w, 2):
            if mask[y, x] and not seen[y, x]:
                stack, size = [(y, x)], 0
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    size += 1
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                if size > 400:
                    panels += 1
    return panels


@pytest.mark.slow
def test_attention_png_has_one_panel_per_layer_and_head(trained_run, tmp_path):
    out = tmp_path / "map.png"
    result = run(
        "attention", "--model", trained_run, "--text", "And God said, Let there be light", "--out", out, "--json", tmp_path / "map.json"
    )
    assert result.returncode == 0, result.stderr
    layers, heads = 2, 4
    assert f"({2 * layers * heads} panels)" in result.stdout
    assert count_panels(out) == 2 * layers * heads
    one = run(
        "attention",
        "--model",
        trained_run,
        "--text",
        "And God said",
        "--out",
        tmp_path / "one.png",
        "--kind",
        "cross",
        "--layers",
        "-1",
        "--average-heads",
    )
    assert one.returncode == 0, one.stderr
    assert count_panels(tmp_path / "one.png") == 1
    import json

    maps = json.loads((tmp_path / "map.json").read_text())
    assert len(maps["cross"]) == layers and len(maps["cross"][0]) == heads
    assert len(maps["cross"][0][0]) == len(maps["target"]) and len(maps["cross"][0][0][0]) == len(maps["source"])
    for row in maps["cross"][1][2]:
        assert sum(row) == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- device-side bookkeeping (the GPU's way, checked on the CPU)
@pytest.mark.parametrize("search", ["greedy", "beam", "beam-nbest"])
def test_checking_for_done_sentences_every_k_steps_changes_no_result(trained, sources, search):
    """A GPU search marks finished rows on the device and asks the host every 8 steps
    (runtime.search_sync_every); the CPU drops them every step. Same hypotheses either way."""
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts))
    results = {}
    for k in (1, 3, 8):
        if search == "greedy":
            results[k] = [[h] for h in run_greedy(model, src, sync_every=k)]
        else:
            kw = dict(beam=4, nbest=2, early_stop="beam") if search == "beam-nbest" else dict(beam=4)
            results[k] = run_beam(model, src, sync_every=k, **kw)
    for k in (3, 8):
        for a, b in zip(results[1], results[k]):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_sampling_with_device_side_bookkeeping_stops_rows_at_eos(trained, sources):
    model, _ = trained
    texts, tok = sources
    src = as_batch(tok.encode(texts[:8]))
    gen = torch.Generator().manual_seed(0)
    hyps = run_sample(model, src, generator=gen, sync_every=8, max_len_a=0, max_len_b=12)
    assert all(len(h.tokens) <= 11 and PAD not in h.tokens and EOS not in h.tokens for h in hyps)
    for h, row in zip(hyps, src):  # the reported log-probability is the hypothesis's own (EOS included), by teacher forcing
        assert h.logprob == pytest.approx(forced_logprob(model, row[row.ne(PAD)], h.tokens), abs=1e-3)


def test_the_gpu_decoding_path_run_on_the_cpu_gives_the_same_translations(trained, sources, monkeypatch):
    """All of the GPU's choices at once (done rows masked and dropped every 8 steps, every cache row
    gathered at each reorder without asking which moved), through the Translator."""
    from aiayn import runtime

    model, ckpt = trained
    texts, _ = sources
    expected = [(t.tokens, t.score) for t in Translator(model, *ckpt.tokenizers, beam=4).translate(texts)]
    greedy = [t.tokens for t in Translator(model, *ckpt.tokenizers, beam=1).translate(texts)]
    monkeypatch.setattr(runtime, "search_sync_every", lambda where: 8)
    monkeypatch.setattr(runtime, "partial_cache_reorder", lambda where: False)
    got = [(t.tokens, t.score) for t in Translator(model, *ckpt.tokenizers, beam=4).translate(texts)]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], abs=1e-4)
    assert [t.tokens for t in Translator(model, *ckpt.tokenizers, beam=1).translate(texts)] == greedy


@pytest.mark.parametrize("columns", [16384, 50257])
def test_two_stage_top_k_is_topk(columns):
    """generate.search.best_per_row (over a large vocabulary on a CPU) gives torch.topk's values and
    columns, with masked (−inf) entries, rows that peak inside one block, and columns past the last
    whole block (50,257 = 1,570 blocks of 32 and 17 more)."""
    from aiayn import runtime
    from aiayn.generate.search import best_per_row

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, columns, generator=g) * 4
    x[0, ::7] = float("-inf")  # (a suppressed EOS, banned n-grams)
    x[1, 64:72] = 30.0 + torch.arange(8.0)  # all 8 best in one block
    x[2, -5:] = 40.0 + torch.arange(5.0)  # best in the columns after the last whole block
    assert runtime.two_stage_topk(x)
    for k in (1, 8):
        top, at = best_per_row(x, k)
        expected = x.topk(k, dim=1)
        assert torch.equal(top, expected.values) and torch.equal(at, expected.indices)
