"""The block set on its own: the parts the other models of the family assemble (a causal block
without cross-attention, the conditioned norm, additive attention, 2-D positions, patches)."""

import math

import pytest
import torch

from aiayn.nn import AdditiveAttention, Block, KVCache, PatchEmbedding, Residual, sinusoid_table, sinusoid_table_2d


def test_a_causal_block_without_cross_attention_sees_no_future_and_decodes_incrementally():
    """A GPT block: Block(causal=True), pre-norm, no cross-attention."""
    torch.manual_seed(0)
    block = Block(32, 4, 64, causal=True, pre_norm=True, activation="gelu_tanh").eval()
    assert not block.has_cross
    x = torch.randn(2, 6, 32)
    full, _ = block(x)
    changed = x.clone()
    changed[:, 4:] += 1.0  # the future changes: positions 0-3 must not
    torch.testing.assert_close(block(changed)[0][:, :4], full[:, :4], atol=1e-6, rtol=0)
    cache = KVCache()
    prefix, _ = block(x[:, :3], cache=cache)  # a prefill of three positions, then one at a time
    steps = [prefix] + [block(x[:, t : t + 1], cache=cache)[0] for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_a_cache_kept_per_sentence_decodes_as_the_time_major_one_through_reorders_and_drops():
    """Beam search's KV cache kept per sentence (never reordered: each hypothesis finds its
    ancestors' keys through `ancestors`) gives the outputs and self-attention weights of the
    time-major cache that moves rows, through a prefill, reorders within sentences and a dropped
    sentence; in a stack of two layers whose caches share one beam mask a step (`masks`)."""
    torch.manual_seed(0)
    blocks = [Block(32, 4, 64, causal=True, pre_norm=False).eval() for _ in range(2)]
    B, G = 3, 4
    shared: dict = {}
    per_sentence, time_major = [KVCache(sentences=B, masks=shared) for _ in blocks], [KVCache() for _ in blocks]

    def run(x, caches):
        for block, cache in zip(blocks, caches):
            x, w = block(x, cache=cache, need_weights=True)
        return x, w

    x = torch.randn(B * G, 3, 32)
    a, wa = run(x, per_sentence)  # a prefill of 3 steps
    b, wb = run(x, time_major)
    assert per_sentence[0].group == G and time_major[0].group == 1
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(wa, wb, atol=1e-6, rtol=0)
    rows = B * G
    for step in range(6):
        order = (torch.arange(rows) // G * G + torch.randint(0, G, (rows,))).contiguous()  # parents within the sentence
        for cache in per_sentence + time_major:
            cache.reorder(order)
        if step == 3:  # the middle sentence is done
            keep = torch.tensor([0, 2])
            kept = (keep[:, None] * G + torch.arange(G)).reshape(-1)
            for cache in per_sentence + time_major:
                cache.select(kept)
            rows = kept.numel()
        x = torch.randn(rows, 1, 32)
        a, wa = run(x, per_sentence)
        b, wb = run(x, time_major)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        torch.testing.assert_close(wa, wb, atol=1e-6, rtol=0)
        # one additive mask for both layers' step, equal to the bool one
        bias = per_sentence[1].beam_bias(1, 4, torch.float32)
        assert bias is per_sentence[0].beam_bias(1, 4, torch.float32)
        assert torch.equal(bias.eq(0), per_sentence[1].beam_mask(1).expand_as(bias))
    assert per_sentence[0].rows == time_major[0].rows == 2 * G and per_sentence[0].length == time_major[0].length == 9
    from aiayn.runtime import beam_cache_as

    with beam_cache_as("time-major"):  # AIAYN_BEAM_CACHE: the layout is the runtime's choice
        chosen = KVCache(sentences=B)
        blocks[0](torch.randn(B * G, 1, 32), cache=chosen)
    assert chosen.group == 1 and chosen.k.size(1) == B * G  # time-major: [capacity, N, h, d_k]


def test_the_product_over_a_bf16_cache_with_room_to_grow_is_the_plain_product():
    """nn.attention's first product over keys in a bf16 buffer with room to grow (a strided view,
    which it multiplies as (K Qᵀ)ᵀ) and over contiguous keys gives bias + scale · Q Kᵀ, to bf16's precision."""
    from aiayn.nn.attention import _scaled_product_plus

    torch.manual_seed(0)
    buffer = torch.randn(2, 3, 16, 4, 8).bfloat16()  # [B, h, capacity, G, d_k]
    keys = buffer[:, :, :5].flatten(2, 3)  # [B, h, 20, d_k], a view with room to grow
    q = torch.randn(2, 3, 4, 8).bfloat16()
    bias = torch.zeros(2, 1, 4, 20).bfloat16().masked_fill_(torch.rand(2, 1, 4, 20) > 0.7, -1e4)
    expected = bias.float() + 0.5 * (q.float() @ keys.float().transpose(-2, -1))
    for k in (keys, keys.contiguous()):
        got = _scaled_product_plus(bias, q, k.transpose(-2, -1), 0.5)
        assert got.shape == (2, 3, 4, 20)
        torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.01)


def test_a_zero_gate_makes_a_conditioned_residual_the_identity():
    """adaLN-Zero (DiT): with the gate at zero, as initialised, each sub-layer adds nothing."""
    torch.manual_seed(0)
    block = Block(16, 2, 32, pre_norm=True, norm_affine=False)
    x = torch.randn(3, 5, 16)
    shift, scale = torch.randn(3, 1, 16), torch.randn(3, 1, 16)
    zero = torch.zeros(3, 1, 16)
    out, _ = block(x, modulation=[(shift, scale, zero), (shift, scale, zero)])
    torch.testing.assert_close(out, x)
    gated, _ = block(x, modulation=[(shift, scale, torch.ones(3, 1, 16))] * 2)
    assert not torch.allclose(gated, x)
    with pytest.raises(ValueError, match="needs pre_norm=True"):
        Residual(0.0, pre_norm=False)(x, torch.nn.LayerNorm(16), lambda h: h, (shift, scale, zero))


def test_additive_attention_weighs_real_tokens_only():
    """Bahdanau et al. (2014): the weights are a distribution over the real source tokens."""
    torch.manual_seed(0)
    attn = AdditiveAttention(d_query=8, d_memory=12, d_attn=10)
    memory = torch.randn(2, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    context, weights = attn(torch.randn(2, 8), attn.keys(memory), memory, mask)
    assert context.shape == (2, 12) and weights.shape == (2, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert (weights[1, 2:] == 0).all()
    torch.testing.assert_close(context[1], weights[1, :2] @ memory[1, :2])


def test_2d_sinusoids_encode_row_and_column():
    table = sinusoid_table_2d(3, 4, 16)  # 3 rows × 4 columns of patches, row-major
    assert table.shape == (12, 16)
    rows, cols = sinusoid_table(3, 8, "concat"), sinusoid_table(4, 8, "concat")
    for r in range(3):
        for c in range(4):
            torch.testing.assert_close(table[r * 4 + c], torch.cat([rows[r], cols[c]]))
    assert table[0, 0].item() == 0.0 and table[0, 4].item() == pytest.approx(math.cos(0.0))


def test_patch_embedding_cuts_images_into_a_sequence():
    embed = PatchEmbedding(in_channels=1, patch_size=4, d_model=24)
    assert embed(torch.randn(2, 1, 28, 28)).shape == (2, 49, 24)
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        embed(torch.randn(1, 1, 30, 28))


@pytest.mark.parametrize("pre_norm,causal", [(True, False), (True, True), (False, False), (False, True)])
def test_a_block_at_one_position_per_row_equals_that_row_of_the_full_block(pre_norm, causal):
    torch.manual_seed(0)
    block = Block(16, 4, 32, causal=causal, pre_norm=pre_norm, layer_scale=0.5).eval()
    x, at = torch.randn(3, 7, 16), torch.tensor([0, 6, 3])
    full, _ = block(x)
    here, _ = block(x, at=at)
    assert here.shape == (3, 1, 16)
    torch.testing.assert_close(here[:, 0], full[torch.arange(3), at], atol=1e-5, rtol=1e-5)


def test_bf16_attention_on_a_cpu_is_fp32_attention_rounded_forward_and_backward():
    """Under bf16 autocast on a CPU, the fused kernel (more keys than `attention_spelled_out` takes)
    runs in fp32 while training too (PyTorch's bf16 CPU kernel is several times slower, backward
    most): the output and the gradients are fp32's, rounded to bf16."""
    from aiayn import runtime
    from aiayn.nn.attention import scaled_dot_product_attention

    torch.manual_seed(0)
    L = runtime.SPELLED_OUT_ATTENTION_MAX_KEYS + 9
    q, k, v = (torch.randn(2, 4, L, 16).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == torch.bfloat16
    grad_out = torch.randn(out.shape).bfloat16()
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
    assert torch.equal(out, ref.bfloat16())
    for ours, theirs in zip(grads, torch.autograd.grad(ref, (q32, k32, v32), grad_out.float())):
        assert ours.dtype == torch.bfloat16
        assert torch.equal(ours, theirs.bfloat16())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_short_attention_spelled_out_on_a_cpu_equals_the_fused_kernel(precision):
    """Up to `SPELLED_OUT_ATTENTION_MAX_KEYS` keys a CPU spells Eq. (1) out (faster than the fused
    kernel there): output and gradients equal the fused kernel's in fp32, and under bf16 autocast
    they are bf16 (products in bf16, the softmax in fp32) within bf16's rounding of fp32's. A query
    whose keys are all masked gives finite values, not NaN."""
    from aiayn import runtime
    from aiayn.nn.attention import scaled_dot_product_attention

    torch.manual_seed(0)
    L = runtime.SPELLED_OUT_ATTENTION_MAX_KEYS
    q32, k32, v32 = (torch.randn(3, 4, L, 16, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 1, L, L, dtype=torch.bool)
    mask[1, :, :, L - 5 :] = False  # a padded sentence
    assert runtime.attention_spelled_out(q32, k32)
    grad_out = torch.randn(3, 4, L, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), grad_out)
    if precision == "fp32":
        out, _ = scaled_dot_product_attention(q32, k32, v32, mask)
        grads = torch.autograd.grad(out, (q32, k32, v32), grad_out)
        tol = {"atol": 1e-5, "rtol": 1e-5}
    else:
        q, k, v = (t.detach().bfloat16().requires_grad_() for t in (q32, k32, v32))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = scaled_dot_product_attention(q, k, v, mask)
        assert out.dtype == torch.bfloat16
        grads = torch.autograd.grad(out, (q, k, v), grad_out.bfloat16())
        assert all(g.dtype == torch.bfloat16 for g in grads)
        tol = {"atol": 0.05, "rtol": 0.05}  # bf16 keeps 8 bits of mantissa: inputs, scores and products each rounded
    torch.testing.assert_close(out.float(), ref, **tol)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours.float(), theirs, **tol)
    mask[2, :, 0] = False  # query 0 of sentence 2 may attend to nothing
    out, _ = scaled_dot_product_attention(q32, k32, v32, mask)
    assert torch.isfinite(out).all()


def test_bf16_prefill_against_an_fp32_cache_is_fp32_attention_rounded():
    """bf16 decoding on a CPU keeps its KV cache in fp32; a prompt's several queries (bf16) against it
    see the keys up to their own position, in fp32, with the output rounded to bf16."""
    from aiayn.nn.attention import scaled_dot_product_attention

    torch.manual_seed(0)
    q = torch.randn(1, 2, 3, 8).bfloat16()
    k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)  # two cached positions, then the three new ones
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    sees = torch.ones(3, 5, dtype=torch.bool).tril(2)  # query i sees keys ≤ i + 2
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k, v, attn_mask=sees)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.bfloat16())
