"""GPT (models/gpt.py): causal masking, incremental decoding with a prefill equal to the full pass,
batches of unequal prompts equal to one prompt at a time, and the generation controls."""

import pytest
import torch

from aiayn import models
from aiayn.models import GPT

VOCAB = 50


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    _, cfg = models.preset_config("gpt-tiny", **{"vocab_size": VOCAB, "n_layers": 2, "context": 64, **overrides})
    return models.build("gpt", cfg).eval()


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def test_no_position_sees_the_future():
    model = tiny()
    x = tokens(12)[None]
    with torch.no_grad():
        base = model(x)
        for t in range(11):
            changed = x.clone()
            changed[0, t + 1 :] = tokens(11 - t, seed=t + 1)
            out = model(changed)
            torch.testing.assert_close(out[0, : t + 1], base[0, : t + 1], atol=1e-5, rtol=0)
            assert not torch.allclose(out[0, t + 1 :], base[0, t + 1 :])


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_incremental_decoding_with_a_prefill_equals_the_full_pass(positional):
    model = tiny(positional=positional)
    x = tokens(10)[None].repeat(2, 1)
    with torch.no_grad():
        full = model(x)
        state = model.start(None)
        first = model.step(x[:, :4], state)  # a 4-token prefill, then one token at a time
        rest = [model.step(x[:, t : t + 1], state) for t in range(4, 10)]
    scale = full.abs().max().item()
    torch.testing.assert_close(first, full[:, 3], atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(torch.stack(rest, 1), full[:, 4:], atol=1e-5 * scale, rtol=0)


def test_left_padded_prompts_decode_as_each_would_alone():
    model = tiny()
    prompts = [tokens(3, 1), tokens(7, 2), tokens(5, 3)]
    P = max(len(p) for p in prompts)
    batch = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        batch[i, P - len(p) :], mask[i, P - len(p) :] = p, True
    follow = tokens(4, 9)
    with torch.no_grad():
        state = model.start(mask)
        batched = [model.step(batch, state)] + [model.step(follow[t].repeat(3, 1), state) for t in range(4)]
        for i, p in enumerate(prompts):
            alone = model(torch.cat([p, follow])[None])[0, len(p) - 1 :]
            got = torch.stack([b[i] for b in batched])
            torch.testing.assert_close(got, alone, atol=1e-4 * alone.abs().max().item(), rtol=0)


# ---------------------------------------------------------------- generation controls
from aiayn.generate.search import repetition_penalty, sampling_filter  # noqa: E402


def test_top_k_top_p_and_min_p_keep_what_they_say():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()
    kept = lambda out: torch.isfinite(out[0]).nonzero().squeeze(1).tolist()  # noqa: E731
    assert kept(sampling_filter(logits, top_k=2)) == [0, 1]
    assert kept(sampling_filter(logits, top_p=0.7)) == [0, 1]  # 0.5 + 0.2 reaches 0.7
    assert kept(sampling_filter(logits, top_p=0.71)) == [0, 1, 2]
    assert kept(sampling_filter(logits, min_p=0.3)) == [0, 1, 2]  # p ≥ 0.3 × 0.5 = 0.15
    assert kept(sampling_filter(logits, min_p=0.5)) == [0]
    # temperature sharpens or flattens, and the cuts see the tempered distribution
    hot = sampling_filter(logits, temperature=2.0).softmax(-1)
    assert hot[0, 0] < 0.5 and hot[0, 4] > 0.05
    with pytest.raises(ValueError, match="temperature"):
        sampling_filter(logits, temperature=0)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[0, 1, 1, -1]])  # token 1 twice; -1 is padding, ignored
    out = repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0]]
    assert torch.equal(repetition_penalty(logits, seen, 1.0), logits)


class _Chars:
    """A character tokenizer over a fixed alphabet (ids 4…), for generation tests."""

    def __init__(self):
        from aiayn.data.text import CharTokenizer

        self.tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.\n")

    def __getattr__(self, name):
        return getattr(self.tok, name)


def generator(**overrides):
    from aiayn.generate.complete import Generator

    tok = _Chars()
    model = tiny(vocab_size=tok.vocab_size, eos_id=3, bos_id=3, pad_id=0, **overrides)
    return Generator(model, tok)


def test_sampling_with_a_seed_is_reproducible_and_seeds_differ():
    from aiayn.generate.complete import GenerationOptions

    gen = generator()
    options = GenerationOptions(max_new_tokens=20, temperature=1.0, seed=7)
    a = [c.text for c in gen.generate(["the", "a b"], options)]
    b = [c.text for c in gen.generate(["the", "a b"], options)]
    c = [c.text for c in gen.generate(["the", "a b"], options.with_overrides(seed=8))]
    assert a == b and a != c


def test_batched_generation_of_unequal_prompts_equals_one_at_a_time():
    from aiayn.generate.complete import GenerationOptions

    gen = generator()
    prompts = ["in the beginning", "a", "and so it was, that"]
    for options in (GenerationOptions(max_new_tokens=15, temperature=0), GenerationOptions(max_new_tokens=15, beam=3)):
        batched = [c.tokens for c in gen.generate(prompts, options)]
        alone = [gen.generate([p], options)[0].tokens for p in prompts]
        assert batched == alone and all(batched)


def test_stop_strings_cut_the_text_and_streaming_shows_what_is_returned():
    from aiayn.generate.complete import GenerationOptions

    gen = generator()
    options = GenerationOptions(max_new_tokens=40, temperature=1.0, seed=3)
    free = gen.generate(["x"], options)[0].text
    stop = free[5:7]  # a string the unstopped text holds
    pieces = []
    c = gen.generate(["x"], options.with_overrides(stop=(stop,)), on_text=lambda i, t: pieces.append(t))[0]
    assert c.text == free[: free.find(stop)] and stop not in c.text
    assert c.finish_reason == "stop" and "".join(pieces) == c.text
    assert gen.generate(["x"], options.with_overrides(max_new_tokens=3))[0].finish_reason in ("length", "stop")


def test_a_short_prompt_beside_a_long_one_uses_its_whole_context():
    from aiayn.generate.complete import GenerationOptions

    gen = generator()  # context 64, learned positions
    long, short = "a" * 50, "b"
    out = gen.generate([long, short], GenerationOptions(max_new_tokens=60, min_new_tokens=60, temperature=0))
    assert len(out[0].tokens) == 64 - 51 and len(out[1].tokens) == 60  # each row to its own limit (bos + prompt + new ≤ 64)
