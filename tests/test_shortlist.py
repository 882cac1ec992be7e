"""Vocabulary shortlists: the lexical table learned at prepare time, restricted output projections, decoding with them."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from aiayn.data.binarize import ParallelDataset
from aiayn.data.lexicon import learn_lexicon
from aiayn.generate import Translator
from aiayn.generate.shortlist import Shortlist


def corpus(pairs):
    """Token arrays and offsets of a list of (source ids, target ids)."""
    out = []
    for side in (0, 1):
        seqs = [np.array(p[side], dtype=np.uint16) for p in pairs]
        out += [np.concatenate(seqs), np.concatenate([[0], np.cumsum([len(s) for s in seqs])])]
    return out


def test_the_lexicon_finds_translations_by_association():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(300):  # source piece i is always translated by target piece 20 + i; piece 5 (a "the") is everywhere
        words = rng.choice(np.arange(6, 16), size=4, replace=False)
        pairs.append((list(words) + [5], list(words + 20) + [5]))
    table, frequent = learn_lexicon(*corpus(pairs), src_vocab=40, tgt_vocab=40, k=4)
    assert table.shape == (40, 4)
    for i in range(6, 16):
        assert table[i, 0] == 20 + i
    assert (table[30:] == -1).all()  # pieces never seen suggest nothing
    assert frequent[0] == 5 and set(frequent[1:11]) == set(range(26, 36))


def test_restricted_projection_equals_the_full_one_on_its_ids(trained):
    model, _ = trained
    ids = torch.tensor([3, 7, 100, 999])
    hidden = torch.randn(5, model.config.d_model)
    with torch.no_grad():
        full = model.project(hidden)
        part = model.project(hidden, (ids, model.output_proj.rows(ids)))
    assert part.shape == (5, 4)  # the candidates' logits alone
    torch.testing.assert_close(part, full[:, ids])


@pytest.fixture(scope="module")
def shortlist(trained, small_dataset):
    model, ckpt = trained
    return Shortlist.for_model(small_dataset, model, *ckpt.tokenizers, k=32)


def test_the_shortlist_keeps_the_references_tokens_and_the_special_ids(trained, shortlist, small_dataset):
    model, _ = trained
    valid = ParallelDataset(small_dataset, "valid")
    covered = total = 0
    for i in range(len(valid)):
        src, tgt = valid[i]
        vocab = set(shortlist.vocabulary(torch.tensor(src.astype(np.int64))[None], model.config.pad_id).tolist())
        assert model.config.eos_id in vocab and model.config.pad_id not in vocab
        covered += sum(int(t) in vocab for t in tgt)
        total += len(tgt)
    # one sentence at a time (the hardest case: a batch's shortlist is the union of its sentences');
    # measured 0.935 on this 2,000-pair slice with k = 32 (0.896 with k = 16)
    assert covered / total > 0.9


def test_greedy_translations_inside_the_shortlist_are_unchanged(trained, shortlist, shipped):
    """Greedy search picks the argmax, which the restriction keeps wherever it is a candidate: a
    full-vocabulary translation made only of its sentence's candidates comes out the same."""
    model, ckpt = trained
    full_tr = Translator(model, *ckpt.tokenizers, beam=1)
    short_tr = Translator(model, *ckpt.tokenizers, beam=1, shortlist=shortlist)
    inside = 0
    for text in shipped["test"][0].read_text().splitlines()[:24]:
        full, short = full_tr.translate([text])[0], short_tr.translate([text])[0]
        vocab = set(shortlist.vocabulary(full_tr._tensor([full.src_tokens]), model.config.pad_id).tolist())
        if set(full.tokens) <= vocab:
            inside += 1
            assert short.tokens == full.tokens
    assert inside >= 6  # (the count depends on the CPU the fixture model was trained on: 12+ on an EPYC, 11 on a Xeon)


def test_beam_translations_with_a_shortlist_stay_close(trained, shortlist, shipped):
    """Beam search ranks by log-probabilities renormalised over the candidates, so some beams change
    (as with bf16, on this barely trained model); the output stays close to the full vocabulary's."""
    import sacrebleu

    model, ckpt = trained
    texts = shipped["test"][0].read_text().splitlines()[:40]
    full = [t.text for t in Translator(model, *ckpt.tokenizers, beam=4).translate(texts)]
    short = [t.text for t in Translator(model, *ckpt.tokenizers, beam=4, shortlist=shortlist).translate(texts)]
    assert sacrebleu.corpus_bleu(short, [full]).score > 70


def test_a_shortlist_of_another_vocabulary_is_refused(trained, small_dataset, tmp_path):
    model, ckpt = trained
    with pytest.raises(ValueError, match="other vocabularies"):
        Shortlist.load(small_dataset, src_sha256="x", tgt_sha256=ckpt.tgt_tokenizer.sha256, always=[3])
    with pytest.raises(FileNotFoundError, match="shortlist"):
        Shortlist.for_model(tmp_path, model, *ckpt.tokenizers)
    (tmp_path / "shortlist.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not an aiayn shortlist"):
        Shortlist.for_model(tmp_path, model, *ckpt.tokenizers)


def test_translate_command_takes_a_shortlist(trained_run, small_dataset):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiayn",
            "translate",
            "--model",
            str(trained_run),
            "--shortlist",
            str(small_dataset),
            "--shortlist-size",
            "16",
        ],
        input="And God said\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "aiayn", "translate", "--model", str(trained_run), "--shortlist", str(trained_run)],
        input="And God said\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "no shortlist" in r.stderr


def test_sampled_translations_stay_inside_the_candidates(trained, shortlist, shipped):
    model, ckpt = trained
    texts = shipped["test"][0].read_text().splitlines()[:6]
    tr = Translator(model, *ckpt.tokenizers, sampling=True, seed=1, shortlist=shortlist)
    vocab = set(shortlist.vocabulary(tr._tensor(ckpt.src_tokenizer.encode(texts)), model.config.pad_id).tolist())
    out = tr.translate(texts)
    assert all(t.tokens and set(t.tokens) <= vocab and model.config.pad_id not in t.tokens for t in out)
