"""One table of weight names: each aiayn block parameter group, the Hugging Face Marian modules it
fuses (in order: q;k;v), and the CTranslate2 TransformerSpec attribute that holds it. Import to
and export from Hugging Face, and export to CTranslate2, all read it."""

from __future__ import annotations

# (aiayn module in a block, [Marian modules, fused in order], CTranslate2 attribute of the layer spec)
SELF_ATTENTION = [
    ("self_attn.qkv_proj", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "self_attention.linear.0"),
    ("self_attn.out_proj", ["self_attn.out_proj"], "self_attention.linear.1"),
    ("self_attn_norm", ["self_attn_layer_norm"], "self_attention.layer_norm"),
]
CROSS_ATTENTION = [
    ("cross_attn.q_proj", ["encoder_attn.q_proj"], "attention.linear.0"),
    ("cross_attn.kv_proj", ["encoder_attn.k_proj", "encoder_attn.v_proj"], "attention.linear.1"),
    ("cross_attn.out_proj", ["encoder_attn.out_proj"], "attention.linear.2"),
    ("cross_attn_norm", ["encoder_attn_layer_norm"], "attention.layer_norm"),
]
FEED_FORWARD = [
    ("ffn.w1", ["fc1"], "ffn.linear_0"),
    ("ffn.w2", ["fc2"], "ffn.linear_1"),
    ("ffn_norm", ["final_layer_norm"], "ffn.layer_norm"),
]
ENCODER_BLOCK = SELF_ATTENTION + FEED_FORWARD
DECODER_BLOCK = SELF_ATTENTION + CROSS_ATTENTION + FEED_FORWARD


def block_weights(cfg):
    """(side, layer index, aiayn module, [Marian modules], CTranslate2 attribute) for every block of an encoder-decoder."""
    for side, n, table in (("encoder", cfg.n_encoder_layers, ENCODER_BLOCK), ("decoder", cfg.n_decoder_layers, DECODER_BLOCK)):
        for i in range(n):
            for ours, marian, ct2 in table:
                yield side, i, f"{side}_layers.{i}.{ours}", [f"{side}.layers.{i}.{m}" for m in marian], ct2
