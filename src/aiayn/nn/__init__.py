"""The block set: the parts of §3 of "Attention Is All You Need", knowing no task.

Every model of the family (models/) is assembled from these: attention (self, cross, additive),
the incremental-decoding state protocol and KV cache, the feed-forward network, the residual
connection with its norm, the block and the stack, positions and embeddings.
"""

from aiayn.nn.attention import AdditiveAttention, CrossAttention, Packing, SelfAttention, scaled_dot_product_attention
from aiayn.nn.blocks import ACTIVATIONS, Block, Dropout, FeedForward, Residual, Stack
from aiayn.nn.cache import DecodingState, KVCache
from aiayn.nn.embeddings import ConvStem, PatchEmbedding, TokenEmbedding
from aiayn.nn.linear import Linear
from aiayn.nn.positions import PositionalEncoding, sinusoid_table, sinusoid_table_2d

__all__ = [
    "ACTIVATIONS",
    "AdditiveAttention",
    "Block",
    "ConvStem",
    "CrossAttention",
    "DecodingState",
    "Dropout",
    "FeedForward",
    "KVCache",
    "Linear",
    "Packing",
    "PatchEmbedding",
    "PositionalEncoding",
    "Residual",
    "SelfAttention",
    "Stack",
    "TokenEmbedding",
    "scaled_dot_product_attention",
    "sinusoid_table",
    "sinusoid_table_2d",
]
