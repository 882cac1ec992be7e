"""RNNsearch (models/rnnsearch.py): its parts against references, incremental decoding against
teacher forcing, batch invariance, every search, bit-exact resume, a learned reversal, and the
translation pipeline (train, average, translate, alignments, heat maps, ensembles, serve)."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aiayn.generate import beam_search, greedy_search, max_lengths, sample, special_tokens
from aiayn.generate.translate import source_batch
from aiayn.models import RNNSearch, RNNSearchConfig, build
from aiayn.models.rnnsearch import gru_update
from aiayn.nn import AdditiveAttention, Linear
from aiayn.train.config import TrainConfig
from aiayn.train.loss import label_smoothed_nll
from aiayn.train.trainer import Trainer

PAD, UNK, BOS, EOS = 0, 1, 2, 3

SMALL = {"preset": "rnnsearch-tiny", "d_embed": 48, "d_hidden": 64, "d_attn": 48, "d_output": 48, "dropout": 0.1}


def small_model(vocab=60, seed=0, **kw) -> RNNSearch:
    torch.manual_seed(seed)
    values = dict(src_vocab_size=vocab, tgt_vocab_size=vocab, d_embed=16, d_hidden=24, d_attn=20, d_output=16, tie_output=True, dropout=0.0)
    return RNNSearch(RNNSearchConfig(**{**values, **kw})).eval()


def as_batch(seqs):
    return source_batch(seqs, PAD, EOS)


def train_config(**overrides) -> TrainConfig:
    values = {
        "model": SMALL,
        "max_tokens": 1500,
        "lr_schedule": "inverse_sqrt",
        "lr": 0.004,
        "warmup_steps": 40,
        "adam_betas": [0.9, 0.999],
        "clip_norm": 1.0,
        "save_every": 125,
        "validate_every": 0,
        "valid_bleu": False,
        "log_every": 1000,
        "threads": 2,
        **overrides,
    }
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def rnn_run(small_dataset, tmp_path_factory):
    """A small RNNsearch trained for 250 updates on the 2,000-pair slice (its run directory)."""
    run = tmp_path_factory.mktemp("runs") / "rnn"
    Trainer(train_config(max_updates=250), small_dataset, run, log=lambda *a: None, progress=False).train()
    return run


@pytest.fixture(scope="module")
def rnn(rnn_run):
    from aiayn.io.checkpoint import load_model

    return load_model(rnn_run / "checkpoints" / "step-00000250.safetensors")


@pytest.fixture(scope="module")
def sources(rnn, shipped):
    _, ckpt = rnn
    return ckpt.src_tokenizer.encode(shipped["test"][0].read_text().splitlines()[:16])


def search_args(model, src):
    return dict(special=special_tokens(model), max_len=max_lengths(model, src, 1.0, 50))


# ---------------------------------------------------------------- the parts
def test_additive_attention_equals_a_loop_over_positions():
    """e_ij = vᵀ tanh(W s + U h_j), α = softmax over the real positions, c = Σ α_j h_j, written out
    one position at a time; grouped queries (a beam's hypotheses) give what each gives alone."""
    torch.manual_seed(0)
    attn = AdditiveAttention(d_query=6, d_memory=10, d_attn=8)
    memory, query = torch.randn(2, 5, 10), torch.randn(2, 3, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    context, weights = attn(query, attn.keys(memory), memory, mask)
    W, U, b, v = attn.query_proj.weight, attn.key_proj.weight, attn.key_proj.bias, attn.v.weight[0]
    for i in range(2):
        for g in range(3):
            n = int(mask[i].sum())
            e = torch.stack([v @ torch.tanh(W @ query[i, g] + U @ memory[i, j] + b) for j in range(n)])
            alpha = e.softmax(0)
            torch.testing.assert_close(weights[i, g, :n], alpha)
            assert (weights[i, g, n:] == 0).all()
            torch.testing.assert_close(context[i, g], alpha @ memory[i, :n])
            alone, _ = attn(query[i : i + 1, g], attn.keys(memory[i : i + 1]), memory[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(alone[0], context[i, g])


def test_gru_update_is_pytorchs_gru_cell():
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(7, 5)
    hidden = Linear(5, 15)
    hidden.weight.data, hidden.bias.data = cell.weight_hh.data, cell.bias_hh.data
    x, s = torch.randn(4, 7), torch.randn(4, 5)
    gates = x @ cell.weight_ih.T + cell.bias_ih
    torch.testing.assert_close(gru_update(gates, s, hidden), cell(x, s))


def test_config_checks():
    with pytest.raises(ValueError, match="tie_output needs d_output == d_embed"):
        RNNSearchConfig(d_embed=32, d_output=16, tie_output=True)
    with pytest.raises(ValueError, match="share_embeddings"):
        RNNSearchConfig(src_vocab_size=10, tgt_vocab_size=12)
    with pytest.raises(ValueError, match="d_hidden"):
        RNNSearchConfig.check({"d_hidden": 0})


# ---------------------------------------------------------------- decoding
def test_incremental_decoding_equals_teacher_forcing():
    """start/step (one token at a time, and a prefix at once) give the logits of decode()."""
    model = small_model()
    src = as_batch([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]])
    tgt = torch.tensor([[BOS, 20, 21, 22, 23], [BOS, 24, 25, 0, 0], [BOS, 26, 27, 28, 0]])
    forced = model(src, tgt)
    state = model.start(src)
    stepped = torch.stack([model.step(tgt[:, t : t + 1], state) for t in range(tgt.size(1))], 1)
    torch.testing.assert_close(stepped, forced, rtol=1e-5, atol=1e-5)
    state = model.start(src)
    torch.testing.assert_close(model.step(tgt[:, :3], state), forced[:, 2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.step(tgt[:, 3:4], state), forced[:, 3], rtol=1e-5, atol=1e-5)


def test_a_padded_batch_gives_what_its_sentences_give_alone():
    model = small_model()
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16]]
    tgt = torch.tensor([[BOS, 20, 21, 22], [BOS, 23, 24, 25], [BOS, 26, 27, 28]])
    batch = model(as_batch(seqs), tgt)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(model(as_batch([s]), tgt[i : i + 1])[0], batch[i], rtol=1e-5, atol=1e-5)
    enc = model.encode(as_batch(seqs))
    assert (enc.states[1, 3:] == 0).all()  # zeros at padding


def test_searches_on_a_trained_model(rnn, sources):
    """Beam 1 is greedy; a batch decodes as its sentences alone; sampling is seeded; top-k 1 is greedy."""
    model, _ = rnn
    src = as_batch(sources)
    greedy = greedy_search(model, src, **search_args(model, src))
    beam1 = beam_search(model, src, beam=1, alpha=0.0, **search_args(model, src))
    assert [g.tokens for g in greedy] == [b[0].tokens for b in beam1]
    assert sum(len(g.tokens) for g in greedy) > len(sources)  # it says something
    beam = beam_search(model, src, beam=4, **search_args(model, src))
    for seq, hyps in list(zip(sources, beam))[:6]:
        one = as_batch([seq])
        alone = beam_search(model, one, beam=4, **search_args(model, one))[0]
        assert alone[0].tokens == hyps[0].tokens
        assert alone[0].score == pytest.approx(hyps[0].score, rel=1e-4, abs=1e-4)
    draws = [
        [h.tokens for h in sample(model, src, generator=torch.Generator().manual_seed(7), **search_args(model, src))] for _ in range(2)
    ]
    assert draws[0] == draws[1]
    top1 = sample(model, src, top_k=1, generator=torch.Generator().manual_seed(1), **search_args(model, src))
    assert [h.tokens for h in top1] == [g.tokens for g in greedy]


def test_beam_scores_are_the_models_log_probabilities(rnn, sources):
    model, _ = rnn
    src = as_batch(sources[:4])
    hyps = beam_search(model, src, beam=4, alpha=0.0, **search_args(model, src))
    for i, h in enumerate(hyps):
        tgt_in = torch.tensor([[model.config.decoder_start_id] + h[0].tokens])
        lprobs = model(src[i : i + 1, : int(src[i].ne(PAD).sum())], tgt_in)[0].log_softmax(-1)
        forced = sum(lprobs[j, t].item() for j, t in enumerate(h[0].tokens + [EOS]))
        assert h[0].logprob == pytest.approx(forced, rel=1e-4, abs=1e-3)


# ---------------------------------------------------------------- learning
def test_a_tiny_rnn_learns_to_reverse():
    """Reversal needs the attention: the first output word is the last input word."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = RNNSearch(RNNSearchConfig(src_vocab_size=16, tgt_vocab_size=16, d_embed=32, d_hidden=64, d_attn=32, d_output=32, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), 3e-3)

    def batch(n):
        seqs = [torch.randint(4, 16, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
        return seqs, [s[::-1] for s in seqs]

    for _ in range(500):
        seqs, targets = batch(64)
        src, out = as_batch(seqs), as_batch(targets)
        tgt_in = torch.cat([torch.full((64, 1), BOS), out[:, :-1]], 1)
        tgt_in[tgt_in.eq(EOS)] = PAD
        hidden, _ = model.decode(tgt_in, model.encode(src))
        real = out.ne(PAD)
        loss, _ = label_smoothed_nll(model.project(hidden[real]), out[real], 0.0)
        opt.zero_grad()
        (loss / real.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    seqs, targets = batch(200)
    src = as_batch(seqs)
    with torch.no_grad():
        got = greedy_search(model, src, **search_args(model, src))
    exact = sum(h.tokens == t for h, t in zip(got, targets)) / len(seqs)
    assert exact >= 0.9, exact


def test_resume_is_bit_exact(small_dataset, tmp_path):
    quiet = dict(log=lambda *a: None, progress=False)
    Trainer(train_config(max_updates=12, save_every=6), small_dataset, tmp_path / "whole", **quiet).train()
    Trainer(train_config(max_updates=6, save_every=6), small_dataset, tmp_path / "cut", **quiet).train()
    Trainer(train_config(max_updates=12, save_every=6), small_dataset, tmp_path / "cut", resume=True, **quiet).train()
    a = load_file(tmp_path / "whole" / "checkpoints" / "step-00000012.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-00000012.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_paper_schedule_needs_d_model(small_dataset, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule paper"):
        Trainer(train_config(lr_schedule="paper", max_updates=2), small_dataset, tmp_path / "run", log=lambda *a: None, progress=False)


def test_presets():
    from aiayn.models import preset_config

    arch, paper = preset_config("rnnsearch", src_vocab_size=30000, tgt_vocab_size=30000)
    assert arch == "rnnsearch" and (paper.d_embed, paper.d_hidden, paper.d_attn, paper.d_output) == (620, 1000, 1000, 500)
    _, tiny_rnn = preset_config("rnnsearch-tiny", src_vocab_size=8000, tgt_vocab_size=8000)
    _, tiny = preset_config("tiny", vocab_size=8000)
    ratio = build("rnnsearch", tiny_rnn).num_parameters() / build("transformer", tiny).num_parameters()
    assert 0.9 < ratio < 1.1, ratio


# ---------------------------------------------------------------- the pipeline
def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "aiayn", *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_translate_average_align_ensemble_and_heat_maps(rnn_run, shipped, tmp_path):
    ckpts = rnn_run / "checkpoints"
    src = tmp_path / "src.txt"
    src.write_text("\n".join(shipped["test"][0].read_text().splitlines()[:6]) + "\n")
    avg = tmp_path / "avg.safetensors"
    assert cli("average", rnn_run, "--last", 2, "--out", avg).returncode == 0
    for extra in (["--beam", 4], ["--beam", 1], ["--sampling", "--top-k", 5, "--seed", 3], ["--precision", "int8"]):
        proc = cli("translate", "--model", avg, "--input", src, *extra)
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 6 and any(line.strip() for line in proc.stdout.splitlines())
    proc = cli("translate", "--model", ckpts / "step-00000250.safetensors", "--model", ckpts / "step-00000125.safetensors", "--input", src)
    assert proc.returncode == 0, proc.stderr  # an ensemble
    proc = cli("translate", "--model", avg, "--input", src, "--print-alignment")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[0]
    assert "\t" in line and all("-" in pair for pair in line.split("\t")[1].split())
    png = tmp_path / "attention.png"
    proc = cli("attention", "--model", avg, "--text", shipped["test"][0].read_text().splitlines()[0], "--out", png)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serve_translates_and_draws_the_attention(rnn_run):
    from fastapi.testclient import TestClient

    from aiayn.serve.app import create_app

    app = create_app(rnn_run / "checkpoints" / "step-00000250.safetensors")
    with TestClient(app) as client:
        info = client.get("/v1/models").json()
        assert json.dumps(info).count("rnnsearch") >= 1
        out = client.post("/v1/translate", json={"texts": ["In the beginning God created the heavens and the earth."]})
        assert out.status_code == 200, out.text
        assert out.json()["translations"][0]["text"]
        att = client.post("/v1/attention", json={"text": "God said.", "encoder": True})
        assert att.status_code == 200, att.text
        body = att.json()
        assert len(body["cross"]) == 1 and body["encoder"] == []
        assert len(body["cross"][0][0]) == len(body["target"])


@pytest.mark.slow
def test_the_served_page_draws_the_rnns_attention(rnn_run, tmp_path):
    """In chromium: the page translates with the RNN and draws its one layer of one head."""
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
    import httpx
    from _serving import browser_page

    from aiayn.serve import ServeSettings, create_app

    text = "And God said, Let there be light."
    app = create_app(rnn_run / "checkpoints" / "step-00000250.safetensors", ServeSettings(), device="cpu")
    with browser_page(app, tmp_path) as (page, server, expect):
        maps = httpx.post(f"{server.url}/v1/attention", json={"text": text, "beam": 2}, timeout=60).json()
        page.goto(server.url + "/")
        expect(page.locator("#model-info")).to_contain_text("model ")
        page.fill("#source", text)
        page.fill("#beam", "2")
        page.click("#translate")
        page.wait_for_selector('#heatmap:not([data-rows="0"])', timeout=60_000)
        rows, cols = len(maps["target"]), len(maps["source"])
        assert page.locator("#heatmap .cell").count() == rows * cols
        assert page.locator("#layer option").all_text_contents() == ["1"]
        assert page.locator("#head option").all_text_contents() == ["average of heads", "1"]
        weights = [float(w) for w in page.locator("#heatmap .cell").evaluate_all("cells => cells.map(c => c.dataset.weight)")]
        assert weights == pytest.approx([w for row in maps["cross"][0][0] for w in row], abs=1e-3)
        assert page.locator("#heatmap .row-label").all_text_contents() == maps["target"]


def test_export_refuses_formats_without_a_recurrent_model(rnn_run, tmp_path):
    proc = cli("export", rnn_run / "checkpoints" / "step-00000250.safetensors", "--format", "hf", "--out", tmp_path / "hf")
    assert proc.returncode != 0 and "RNNsearch model has no counterpart" in proc.stderr
    assert not (tmp_path / "hf").exists()
