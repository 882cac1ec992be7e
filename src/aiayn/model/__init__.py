"""The models. `Transformer` is the encoder-decoder of "Attention Is All You Need"."""

from aiayn.model.attention import MultiHeadAttention, scaled_dot_product_attention
from aiayn.model.layers import DecoderLayer, EncoderLayer, FeedForward, PositionalEncoding, sinusoid_table
from aiayn.model.transformer import DecoderCache, EncoderOut, Transformer, TransformerConfig

__all__ = [
    "DecoderCache", "DecoderLayer", "EncoderLayer", "EncoderOut", "FeedForward", "MultiHeadAttention",
    "PositionalEncoding", "Transformer", "TransformerConfig", "scaled_dot_product_attention", "sinusoid_table",
]
