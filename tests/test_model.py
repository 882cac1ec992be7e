"""The model core: the paper's dimensions, masks, incremental decoding, and an independent reference."""

import math

import pytest
import torch
from torch import nn

from aiayn.models import Transformer, TransformerConfig
from aiayn.nn import scaled_dot_product_attention, sinusoid_table

PAD = 0


def tiny(vocab=50, **overrides):
    torch.manual_seed(0)
    cfg = TransformerConfig.preset(
        "tiny", vocab_size=vocab, dropout=0.0, **{"pre_norm": False, **overrides}
    )  # post-norm (the paper) unless asked
    return Transformer(cfg).eval()


def padded_batch(vocab=50, lengths=(7, 4, 6), seed=1):
    g = torch.Generator().manual_seed(seed)
    out = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randint(4, vocab, (n,), generator=g)
    return out


def test_parameter_counts_match_the_paper():
    """Table 3 dimensions with a 37,000-token shared vocabulary: the paper quotes 65M and 213M."""
    base = Transformer(TransformerConfig.preset("base", vocab_size=37000)).num_parameters()
    big = Transformer(TransformerConfig.preset("big", vocab_size=37000)).num_parameters()
    print(f"\nparameters: base {base / 1e6:.2f}M, big {big / 1e6:.2f}M (paper: 65M, 213M)")
    assert 62.5e6 < base < 63.5e6
    assert 213.5e6 < big < 214.5e6
    # the count by hand: shared embedding/softmax + encoder layers + decoder layers
    d, f, V, N = 512, 2048, 37000, 6
    attn, ffn, ln = 4 * (d * d + d), 2 * d * f + f + d, 2 * d
    assert base == V * d + N * (attn + ffn + 2 * ln) + N * (2 * attn + ffn + 3 * ln)


def test_table3_presets():
    base, big = TransformerConfig.preset("base"), TransformerConfig.preset("big")
    assert (base.n_encoder_layers, base.d_model, base.d_ff, base.n_heads, base.dropout) == (6, 512, 2048, 8, 0.1)
    assert (big.n_encoder_layers, big.d_model, big.d_ff, big.n_heads, big.dropout) == (6, 1024, 4096, 16, 0.3)
    assert base.activation == "relu" and not base.pre_norm and base.attn_dropout == 0 and base.activation_dropout == 0
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.preset("huge")
    with pytest.raises(ValueError, match="share_embeddings"):
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=12)


def test_sinusoids_follow_the_formula():
    d = 16
    table = sinusoid_table(30, d)
    for pos in (0, 3, 29):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    concat = sinusoid_table(30, d, "concat")
    assert torch.equal(concat[:, : d // 2], table[:, 0::2]) and torch.equal(concat[:, d // 2 :], table[:, 1::2])


def test_embeddings_are_scaled_and_tied():
    model = tiny()
    assert model.output_proj.weight is model.tgt_embed.weight is model.src_embed.weight
    tokens = torch.tensor([[5, 6]])
    x = model.embed(tokens, model.src_embed)
    expected = model.src_embed.weight[tokens] * math.sqrt(128) + sinusoid_table(2, 128)
    torch.testing.assert_close(x, expected)
    untied = Transformer(
        TransformerConfig.preset("tiny", pre_norm=False, src_vocab_size=40, tgt_vocab_size=30, share_embeddings=False, tie_output=False)
    )
    assert untied.src_embed is not untied.tgt_embed and untied.output_proj.weight is not untied.tgt_embed.weight
    assert untied(torch.tensor([[39, 5]]), torch.tensor([[29]])).shape == (1, 1, 30)


def test_dropout_keeps_1_minus_p_and_rescales():
    from aiayn.nn.blocks import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.1)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = drop(x)
    kept = y.ne(0)
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad.ne(0), kept)  # the gradient flows through the kept elements only
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    assert torch.equal(a, drop(x))  # the global RNG drives it: checkpoints can restore it
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_plain_attention_path_equals_fused_kernel():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    for causal in (False, True):
        fast, none = scaled_dot_product_attention(q, k, v, mask, causal)
        plain, weights = scaled_dot_product_attention(q, k, v, mask, causal, need_weights=True)
        assert none is None
        torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))
        assert (weights[1, :, :, 3:] == 0).all()  # no weight on padding
        if causal:
            assert (weights.triu(1) == 0).all()


@pytest.mark.parametrize("variant", [{}, {"pre_norm": True}, {"positional": "learned"}, {"activation": "swish", "output_bias": True}])
def test_incremental_decoding_equals_full_forward(variant):
    """The KV cache gives the same logits as the full forward pass, on a batch with padding."""
    model = tiny(**variant)
    if model.final_logits_bias is not None:
        nn.init.normal_(model.final_logits_bias)
    src = padded_batch(lengths=(7, 3, 5))
    tgt = padded_batch(lengths=(6, 6, 6), seed=2)
    full = model(src, tgt)  # [B, T, V]
    state = model.start(src)
    steps = torch.stack([model.step(tgt[:, t : t + 1], state) for t in range(tgt.size(1))], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    assert state.length == tgt.size(1)
    # a multi-token prefill (the first 4 tokens at once), then one step, gives the same logits
    state = model.start(src)
    torch.testing.assert_close(model.step(tgt[:, :4], state), full[:, 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.step(tgt[:, 4:5], state), full[:, 4], atol=1e-5, rtol=0)


def test_cache_reorder_and_select_follow_the_hypotheses():
    model = tiny()
    src = padded_batch(lengths=(5, 3))
    G = 3  # hypotheses per sentence
    cache = model.start(src)
    tgt = padded_batch(lengths=(4,) * 6, seed=3)  # 6 = 2 sentences × 3 hypotheses
    for t in range(2):
        model.step(tgt[:, t : t + 1], cache)
    order = torch.tensor([2, 2, 0, 4, 3, 3])  # each hypothesis continues one of its own sentence
    cache.reorder(order)
    got = model.step(tgt[:, 2:3], cache)
    # reference: run the reordered prefixes from scratch
    prefix = torch.cat([tgt[order, :2], tgt[:, 2:3]], dim=1)
    ref = model(src.repeat_interleave(G, 0), prefix)[:, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    cache.select(torch.tensor([1]))  # drop sentence 0
    got = model.step(tgt[3:, 3:4], cache)
    prefix = torch.cat([prefix[3:], tgt[3:, 3:4]], dim=1)
    ref = model(src[1:2].repeat_interleave(G, 0), prefix)[:, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_padding_changes_nothing():
    model = tiny()
    src = padded_batch(lengths=(7, 4, 6))
    tgt = padded_batch(lengths=(5, 5, 5), seed=2)
    base = model(src, tgt)
    # 1) with an explicit mask, the tokens under padding can be anything
    mask = src.ne(PAD)
    changed = src.clone()
    changed[~mask] = torch.randint(4, 50, (int((~mask).sum()),))
    enc_a, enc_b = model.encode(src, mask), model.encode(changed, mask)
    torch.testing.assert_close(enc_a.states[mask], enc_b.states[mask], atol=0, rtol=0)
    torch.testing.assert_close(model.project(model.decode(tgt, enc_b)[0]), base, atol=1e-6, rtol=0)
    # 2) a sentence alone gives what it gives inside a padded batch
    alone = model(src[1:2, :4], tgt[1:2])
    torch.testing.assert_close(alone, base[1:2], atol=1e-5, rtol=0)


def test_padding_is_skipped_and_a_padded_batch_equals_its_sentences_alone():
    """Position-wise work runs on the real tokens only (Packing); outputs and gradients of a batch
    padded on both sides equal those of each sentence run alone (no padding, so no packing)."""
    from aiayn.nn.attention import Packing

    mask = torch.tensor([[True, True, True], [True, False, False]])
    packing = Packing.of(mask)
    assert Packing.of(torch.ones(2, 3, dtype=torch.bool)) is None  # nothing to skip
    x = torch.arange(6.0).view(2, 3, 1)
    assert packing.pack(x).view(-1).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert packing.unpack(packing.pack(x)).view(-1).tolist() == [0.0, 1.0, 2.0, 3.0, 0.0, 0.0]

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", pre_norm=False, vocab_size=50, dropout=0.0))  # train mode: the gradient path
    src_len, tgt_len = (7, 3, 5), (4, 6, 2)
    src, tgt = padded_batch(lengths=src_len), padded_batch(lengths=tgt_len, seed=2)
    real = tgt.ne(PAD)
    logits = model(src, tgt)
    loss = logits[real].log_softmax(-1).mean()
    (grad_batch,) = torch.autograd.grad(loss * real.sum(), [model.encoder_layers[0].ffn.w1.weight])
    grad_alone = torch.zeros_like(grad_batch)
    for i, (s, t) in enumerate(zip(src_len, tgt_len)):
        alone = model(src[i : i + 1, :s], tgt[i : i + 1, :t])
        torch.testing.assert_close(alone[0], logits[i, :t], atol=1e-5, rtol=0)
        (g,) = torch.autograd.grad(alone[0].log_softmax(-1).mean() * t, [model.encoder_layers[0].ffn.w1.weight])
        grad_alone += g
    torch.testing.assert_close(grad_batch, grad_alone, atol=1e-5, rtol=1e-4)

    def run_seeing_ffn_inputs():
        """The model's logits, and the input shapes of the first encoder and decoder FFNs."""
        rows = []
        hooks = [
            m.ffn.w1.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape))
            for m in (model.encoder_layers[0], model.decoder_layers[0])
        ]
        try:
            return model(src, tgt), rows
        finally:
            for h in hooks:
                h.remove()

    # the feed-forward networks saw the real tokens only
    _, rows = run_seeing_ffn_inputs()
    assert rows == [(sum(src_len), 128), (sum(tgt_len), 128)]
    # skip_padding=False (the default off the CPU) runs them on the padded batch, with the same
    # outputs and gradients
    model.skip_padding = False
    padded, rows = run_seeing_ffn_inputs()
    assert rows == [(3, 7, 128), (3, 6, 128)]
    torch.testing.assert_close(padded[real], logits[real], atol=1e-5, rtol=0)
    (grad_padded,) = torch.autograd.grad(padded[real].log_softmax(-1).mean() * real.sum(), [model.encoder_layers[0].ffn.w1.weight])
    torch.testing.assert_close(grad_padded, grad_batch, atol=1e-5, rtol=1e-4)
    # the default (None) decides by the batch's device: the CPU skips padding, other devices do not
    model.skip_padding = None
    assert model.packing(mask) is not None and model.packing(mask.to("meta")) is None


def test_future_target_tokens_change_no_earlier_output():
    model = tiny()
    src, tgt = padded_batch(lengths=(6, 4)), padded_batch(lengths=(7, 7), seed=2)
    base = model(src, tgt)
    for t in (1, 4, 6):
        changed = tgt.clone()
        changed[:, t:] = torch.randint(4, 50, changed[:, t:].shape)
        out = model(src, changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(out[:, t], base[:, t])


def test_matches_torch_nn_transformer():
    """With our weights copied in, torch.nn.Transformer (post-norm, relu, same masks) gives the same outputs."""
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", pre_norm=False, vocab_size=50, n_encoder_layers=3, n_decoder_layers=2)
    model = Transformer(cfg).eval()
    d, h = cfg.d_model, cfg.n_heads
    with torch.no_grad():  # random LayerNorm affine parameters and biases, so that they are compared too
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.Linear)) and m.bias is not None:
                nn.init.normal_(m.bias, 0.0, 0.1)
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, 0.1)
    enc_layer = nn.TransformerEncoderLayer(d, h, cfg.d_ff, dropout=0.0, batch_first=True)
    dec_layer = nn.TransformerDecoderLayer(d, h, cfg.d_ff, dropout=0.0, batch_first=True)
    ref = nn.Transformer(
        d,
        h,
        batch_first=True,
        custom_encoder=nn.TransformerEncoder(enc_layer, cfg.n_encoder_layers, norm=None, enable_nested_tensor=False),
        custom_decoder=nn.TransformerDecoder(dec_layer, cfg.n_decoder_layers, norm=None),
    ).eval()
    with torch.no_grad():
        for ours, theirs in zip(model.encoder_layers, ref.encoder.layers):
            theirs.self_attn.in_proj_weight.copy_(ours.self_attn.qkv_proj.weight)
            theirs.self_attn.in_proj_bias.copy_(ours.self_attn.qkv_proj.bias)
            theirs.self_attn.out_proj.load_state_dict(ours.self_attn.out_proj.state_dict())
            theirs.linear1.load_state_dict(ours.ffn.w1.state_dict())
            theirs.linear2.load_state_dict(ours.ffn.w2.state_dict())
            theirs.norm1.load_state_dict(ours.self_attn_norm.state_dict())
            theirs.norm2.load_state_dict(ours.ffn_norm.state_dict())
        for ours, theirs in zip(model.decoder_layers, ref.decoder.layers):
            theirs.self_attn.in_proj_weight.copy_(ours.self_attn.qkv_proj.weight)
            theirs.self_attn.in_proj_bias.copy_(ours.self_attn.qkv_proj.bias)
            theirs.self_attn.out_proj.load_state_dict(ours.self_attn.out_proj.state_dict())
            theirs.multihead_attn.in_proj_weight.copy_(torch.cat([ours.cross_attn.q_proj.weight, ours.cross_attn.kv_proj.weight]))
            theirs.multihead_attn.in_proj_bias.copy_(torch.cat([ours.cross_attn.q_proj.bias, ours.cross_attn.kv_proj.bias]))
            theirs.multihead_attn.out_proj.load_state_dict(ours.cross_attn.out_proj.state_dict())
            theirs.linear1.load_state_dict(ours.ffn.w1.state_dict())
            theirs.linear2.load_state_dict(ours.ffn.w2.state_dict())
            theirs.norm1.load_state_dict(ours.self_attn_norm.state_dict())
            theirs.norm2.load_state_dict(ours.cross_attn_norm.state_dict())
            theirs.norm3.load_state_dict(ours.ffn_norm.state_dict())
    src, tgt = padded_batch(lengths=(7, 4, 6)), padded_batch(lengths=(6, 3, 5), seed=2)
    src_pad, tgt_pad = src.eq(PAD), tgt.eq(PAD)
    with torch.no_grad():
        enc = model.encode(src)
        hidden, _ = model.decode(tgt, enc)
        x_src, x_tgt = model.embed(src, model.src_embed), model.embed(tgt, model.tgt_embed)
        expected = ref(
            x_src,
            x_tgt,
            tgt_mask=nn.Transformer.generate_square_subsequent_mask(tgt.size(1)),
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad,
        )
        memory = ref.encoder(x_src, src_key_padding_mask=src_pad)
    real_src, real_tgt = ~src_pad, ~tgt_pad
    torch.testing.assert_close(enc.states[real_src], memory[real_src], atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden[real_tgt], expected[real_tgt], atol=1e-5, rtol=0)


def test_flops_helper_agrees_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = TransformerConfig.preset("tiny", pre_norm=False, vocab_size=300)
    model = Transformer(cfg).eval()
    B, S, T = 4, 12, 10
    src, tgt = torch.randint(4, 300, (B, S)), torch.randint(4, 300, (B, T))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from aiayn.runtime import gemm_library

    counter = FlopCounterMode(display=False)  # it sees aten's matmuls, not oneDNN's
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH), gemm_library("mkl"):  # attention as plain matmuls too
        hidden, _ = model.decode(tgt, model.encode(src))
        model.project(hidden)
    counted = counter.get_total_flops()
    # the counter counts the full causal square; the helper counts half of it
    causal_half = model.config.n_decoder_layers * 2 * 2 * (T / 2) * cfg.d_model * B * T
    assert model.forward_flops(B * S, B * T, S, T) == pytest.approx(counted - causal_half, rel=1e-6)


@pytest.mark.slow
def test_tiny_model_learns_to_reverse():
    """A `tiny` Transformer learns to reverse short sequences to 100% token accuracy."""
    torch.manual_seed(0)
    vocab, bos, eos = 16, 2, 3
    cfg = TransformerConfig.preset("tiny", pre_norm=False, vocab_size=vocab, dropout=0.0, n_encoder_layers=2, n_decoder_layers=2)
    model = Transformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.98), eps=1e-9)

    def batch(n, g):
        seq = torch.randint(4, vocab, (n, 6), generator=g)
        tgt = seq.flip(1)
        src = torch.cat([seq, torch.full((n, 1), eos)], 1)
        return src, torch.cat([torch.full((n, 1), bos), tgt], 1), torch.cat([tgt, torch.full((n, 1), eos)], 1)

    def greedy_accuracy(src, tgt_out) -> float:  # decoding with the cache: no teacher forcing
        model.eval()
        with torch.no_grad():
            state = model.start(src)
            token = torch.full((src.size(0), 1), bos)
            out = []
            for _ in range(tgt_out.size(1)):
                token = model.step(token, state).argmax(-1, keepdim=True)
                out.append(token[:, 0])
        model.train()
        return (torch.stack(out, 1) == tgt_out).float().mean().item()

    g = torch.Generator().manual_seed(0)
    held_out = batch(200, torch.Generator().manual_seed(123))
    accuracy = 0.0
    for step in range(1200):  # usually 600 updates; the exact number depends on the CPU's rounding
        for group in opt.param_groups:  # warm up, then decay (as §5.3, compressed)
            group["lr"] = 3e-3 * min((step + 1) / 100, ((step + 1) / 100) ** -0.5)
        src, tgt_in, tgt_out = batch(64, g)
        loss = nn.functional.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step + 1 >= 600 and (step + 1) % 100 == 0:
            accuracy = greedy_accuracy(held_out[0], held_out[2])
            if accuracy == 1.0:
                break
    print(f"\nreverse task: token accuracy {accuracy:.4f} after {step + 1} updates, last loss {loss.item():.4f}")
    assert accuracy == 1.0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
def test_onednn_products_agree_with_mkl_and_follow_weight_changes():
    import copy

    from aiayn.runtime import gemm_library

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", pre_norm=False, vocab_size=300)).eval()
    src, tgt = torch.randint(4, 300, (8, 9)), torch.randint(4, 300, (8, 7))
    with torch.no_grad():
        with gemm_library("mkl"):
            reference = model(src, tgt)
        with gemm_library("onednn"):
            fast = model(src, tgt)  # packs the weights of products of ≥ Linear.ONEDNN_MIN_MACS multiply-adds
            assert model.output_proj._packed is not None  # 56 rows × 128 × 300
            assert model.decoder_layers[0].self_attn.out_proj._packed is None  # 56 × 128 × 128: too small, MKL
            assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-5)
            assert torch.equal(copy.deepcopy(model)(src, tgt), fast)  # copies drop the packed weights, not the results
            model.decoder_layers[0].ffn.w1.weight.mul_(-1)  # an in-place change is seen: repacked
            changed = model(src, tgt)
        with gemm_library("mkl"):
            assert torch.allclose(changed, model(src, tgt), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed, fast)
    model.train()
    assert model.output_proj._packed is None
    with gemm_library("onednn"):  # with gradients the product is torch's own (and differentiable)
        model(src, tgt).sum().backward()
    assert model.output_proj.weight.grad is not None


def test_compile_stacks_keeps_parameters_and_copies_cleanly():
    """compile_stacks() leaves the parameters and state-dict keys alone, is used only in training,
    and a copy or pickle of the model leaves the compiled forms behind."""
    import copy
    import pickle

    from aiayn.train.trainer import compile_stacks

    model = Transformer(TransformerConfig.preset("tiny", pre_norm=False, vocab_size=50))
    keys = list(model.state_dict())
    compile_stacks(model)  # torch.compile wraps lazily: nothing is compiled until a call
    assert list(model.state_dict()) == keys
    layer = model.encoder_layers[0]
    assert model.encoder_layers._run(layer) is not layer and model.eval().encoder_layers._run(layer) is layer
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.encoder_layers._compiled == {} and clone.decoder_layers._compiled == {} and list(clone.state_dict()) == keys
