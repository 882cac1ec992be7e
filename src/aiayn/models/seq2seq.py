"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017): the encoder-decoder of §3,
assembled from the block set.

    src tokens ─► embed·√d_model + PE ─► Stack of N Block ───────────────────┐ (keys, values)
    tgt tokens ─► embed·√d_model + PE ─► Stack of N Block(causal, cross) ─► Linear (tied) ─► logits

Read top to bottom: the config (Table 3), then the model: embeddings (§3.4, §3.5), the stacks
(§3.1), the output projection (§3.4), and incremental decoding (`start`, `step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from aiayn import runtime, schema
from aiayn.models.config import ModelConfig, check_heads
from aiayn.nn import Block, Dropout, KVCache, Linear, Packing, PositionalEncoding, Stack, TokenEmbedding
from aiayn.nn.cache import hypothesis_rows, reorder_caches


@dataclass
class TransformerConfig(ModelConfig):
    """Hyper-parameters; the names are the paper's (Table 3: N, d_model, d_ff, h, P_drop)."""

    ARCHITECTURE = "transformer"

    src_vocab_size: int = 37000
    tgt_vocab_size: int = 37000
    d_model: int = 512
    n_heads: int = 8  # h
    d_ff: int = 2048
    n_encoder_layers: int = 6  # N
    n_decoder_layers: int = 6  # N
    dropout: float = 0.1  # P_drop (§5.4): sub-layer outputs, and embeddings + positions
    attn_dropout: float = 0.0  # on attention probabilities (tensor2tensor; not in the paper)
    activation_dropout: float = 0.0  # inside the FFN (tensor2tensor's relu_dropout; not in the paper)
    activation: str = "relu"  # relu (paper) | gelu | swish
    pre_norm: bool = False  # False: LayerNorm(x + Sublayer(x)) as in the paper
    positional: str = "sinusoidal"  # sinusoidal (paper) | learned
    positional_layout: str = "interleaved"  # interleaved sin/cos (paper) | concat (tensor2tensor, Marian)
    max_positions: int = 1024  # for learned positions; sinusoids extrapolate
    scale_embedding: bool = True  # §3.4: multiply embeddings by √d_model
    share_embeddings: bool = True  # one embedding matrix for source and target (joint vocabulary)
    tie_output: bool = True  # §3.4: the pre-softmax projection shares the target embedding
    output_bias: bool = False  # a bias on the logits (Marian's final_logits_bias)
    bias: bool = True  # biases in the attention and FFN projections
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    decoder_start_id: int = -1  # first decoder input; -1 means bos_id (Marian starts with pad)

    def __post_init__(self):
        if self.decoder_start_id < 0:
            self.decoder_start_id = self.bos_id
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary, but src_vocab_size={self.src_vocab_size} "
                f"and tgt_vocab_size={self.tgt_vocab_size}; set share_embeddings=False"
            )

    @classmethod
    def check(cls, values: dict, where: str = "") -> None:
        """Types and ranges of (some of) the fields, before a model is built."""
        from aiayn.nn import ACTIVATIONS

        S = schema
        rules = {
            "src_vocab_size": S.AT_LEAST_1,
            "tgt_vocab_size": S.AT_LEAST_1,
            "d_model": S.AT_LEAST_1,
            "n_heads": S.AT_LEAST_1,
            "d_ff": S.AT_LEAST_1,
            "n_encoder_layers": S.AT_LEAST_1,
            "n_decoder_layers": S.AT_LEAST_1,
            "dropout": S.PROBABILITY,
            "attn_dropout": S.PROBABILITY,
            "activation_dropout": S.PROBABILITY,
            "activation": S.Rule(choices=tuple(ACTIVATIONS)),
            "positional": S.Rule(choices=("sinusoidal", "learned")),
            "positional_layout": S.Rule(choices=("interleaved", "concat")),
            "max_positions": S.AT_LEAST_1,
            "layer_norm_eps": S.POSITIVE,
            "pad_id": S.AT_LEAST_0,
            "unk_id": S.AT_LEAST_0,
            "bos_id": S.AT_LEAST_0,
            "eos_id": S.AT_LEAST_0,
        }
        schema.check(cls, values, where, rules, what="model config")
        check_heads(values, where)


@dataclass
class EncoderOut:
    states: Tensor  # [B, S, d_model] (zeros at padding)
    mask: Tensor  # [B, 1, 1, S], True at real (non-padding) source tokens
    attention_weights: list = field(default_factory=list)  # with need_weights: per layer [B, h, S, S]
    packed: Tensor | None = None  # the real tokens' states [n, d_model] where the batch has padding
    packing: Packing | None = None

    def keys_values(self, block: Block) -> tuple[Tensor, Tensor]:
        """A decoder block's cross-attention keys and values for these states (from the real tokens alone)."""
        if self.packing is not None:
            return block.cross_attn.keys_values(self.packed, self.packing)
        return block.cross_attn.keys_values(self.states)


@dataclass
class Seq2SeqState:
    """Incremental decoding of N = B·G hypotheses (G per source sentence, sentence-major); follows
    nn.DecodingState. kv_caches[l]: decoder layer l's own keys/values so far; cross_kv[l]: its
    encoder-decoder keys/values, 2 × [B, h, S, d_k], computed once per source."""

    kv_caches: list[KVCache]
    cross_kv: list[tuple[Tensor, Tensor]]
    memory_mask: Tensor
    length: int = 0
    output: tuple[Tensor, nn.Module] | None = None  # a shortlist: (target ids, the projection to them alone); steps give their logits

    def reorder(self, order: Tensor) -> None:
        """Beam search: hypothesis n now continues hypothesis order[n] (of the same sentence)."""
        reorder_caches(self.kv_caches, order)

    def select(self, sentences: Tensor) -> None:
        """Keep only the given source sentences (with all their hypotheses), e.g. the unfinished ones."""
        B = self.memory_mask.size(0)
        group = self.kv_caches[0].rows // B if self.kv_caches else 0
        if group:
            rows = hypothesis_rows(sentences, group)
            for c in self.kv_caches:
                c.select(rows)
        self.cross_kv = [(k.index_select(0, sentences), v.index_select(0, sentences)) for k, v in self.cross_kv]
        self.memory_mask = self.memory_mask.index_select(0, sentences)


class Transformer(nn.Module):
    """§3 Model Architecture: an encoder and a decoder, each a stack of N identical layers."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = cfg = config
        # §3.4 Embeddings and Softmax
        self.src_embed = TokenEmbedding(cfg.src_vocab_size, cfg.d_model, cfg.pad_id, cfg.scale_embedding)
        self.tgt_embed = (
            self.src_embed if cfg.share_embeddings else TokenEmbedding(cfg.tgt_vocab_size, cfg.d_model, cfg.pad_id, cfg.scale_embedding)
        )
        # §3.5 Positional Encoding
        self.positions = PositionalEncoding(cfg.d_model, cfg.max_positions, cfg.positional, cfg.positional_layout)
        self.dropout = Dropout(cfg.dropout)
        # §3.1 Encoder and Decoder Stacks
        block = dict(
            pre_norm=cfg.pre_norm,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
            activation=cfg.activation,
            activation_dropout=cfg.activation_dropout,
            bias=cfg.bias,
            norm_eps=cfg.layer_norm_eps,
        )
        self.encoder_layers = Stack(Block(cfg.d_model, cfg.n_heads, cfg.d_ff, **block) for _ in range(cfg.n_encoder_layers))
        self.decoder_layers = Stack(
            Block(cfg.d_model, cfg.n_heads, cfg.d_ff, causal=True, cross=True, **block) for _ in range(cfg.n_decoder_layers)
        )
        # pre-norm stacks end with a LayerNorm (post-norm layers already end with one)
        self.encoder_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()
        # §3.4: "the same weight matrix between the two embedding layers and the pre-softmax linear transformation"
        self.output_proj = Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.final_logits_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab_size)) if cfg.output_bias else None
        self.reset_parameters()
        if cfg.tie_output:
            self.output_proj.weight = self.tgt_embed.weight
        self.skip_padding: bool | None = None  # None: as runtime.skip_padding says (the CPU); see packing()

    def reset_parameters(self) -> None:
        """Xavier-uniform projections (as tensor2tensor and fairseq), N(0, d_model^-0.5) embeddings."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in [*self.encoder_layers, *self.decoder_layers]:  # fused Q/K/V: init each d×d block alone
            for proj in (block.self_attn.qkv_proj, block.cross_attn.kv_proj if block.has_cross else None):
                if proj is not None:
                    for part in proj.weight.data.chunk(proj.weight.size(0) // proj.weight.size(1)):
                        nn.init.xavier_uniform_(part)
        for embedding in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(embedding.weight, mean=0.0, std=self.config.d_model**-0.5)
            nn.init.zeros_(embedding.weight[self.config.pad_id])

    # ----- §3.4 + §3.5: token embedding · √d_model + positional encoding, then dropout (§5.4)
    def embed(self, tokens: Tensor, table: TokenEmbedding, offset: int = 0) -> Tensor:
        return self.dropout(table(tokens) + self.positions(tokens.size(1), offset))  # [B, L, d_model]

    def _inputs(self, tokens: Tensor, table: TokenEmbedding, real: Tensor) -> tuple[Tensor, Packing | None]:
        """A stack's input: the embedded tokens ([B, L, d_model]), or their real tokens alone
        ([n, d_model]) with their packing where padding is skipped."""
        packing = self.packing(real)
        x = self.embed(tokens, table)
        return (x if packing is None else packing.pack(x)), packing

    def packing(self, mask: Tensor) -> Packing | None:
        """How the position-wise layers skip the padding of a batch (mask: [B, L], True at real
        tokens), or None to run them on the padded batch. `skip_padding` decides; None (the
        default) leaves it to runtime.skip_padding (the CPU only)."""
        skip = self.skip_padding if self.skip_padding is not None else runtime.skip_padding(mask.device)
        return Packing.of(mask) if skip else None

    # ----- §3.1 Encoder
    def encode(self, src_tokens: Tensor, src_mask: Tensor | None = None, need_weights: bool = False) -> EncoderOut:
        """src_tokens: [B, S] (padded with pad_id). src_mask: optional [B, S] bool, True at real tokens."""
        if src_mask is None:
            src_mask = src_tokens.ne(self.config.pad_id)
        mask = src_mask[:, None, None, :]  # [B, 1, 1, S]: broadcast over heads and queries
        x, packing = self._inputs(src_tokens, self.src_embed, src_mask)
        x, weights = self.encoder_layers(x, mask=mask, need_weights=need_weights, packing=packing)
        x = self.encoder_norm(x)
        weights = weights if need_weights else []
        if packing is None:
            return EncoderOut(x, mask, weights)
        return EncoderOut(packing.unpack(x), mask, weights, packed=x, packing=packing)

    # ----- §3.1 Decoder (training / forced decoding: all target positions at once)
    def decode(self, tgt_in: Tensor, enc: EncoderOut, need_weights: bool = False) -> tuple[Tensor, list]:
        """tgt_in: [B, T], right-padded decoder inputs (start symbol + target[:-1]).

        Returns the final hidden states [B, T, d_model] and, with need_weights, the encoder-decoder
        attention per layer [B, h, T, S]. Padding sits at the end, so the causal mask alone
        keeps every real position from seeing it.
        """
        real = tgt_in.ne(self.config.pad_id)
        real[:, 0] = True  # the start symbol (which may be pad_id, as in Marian)
        x, packing = self._inputs(tgt_in, self.tgt_embed, real)
        memories = [enc.keys_values(block) for block in self.decoder_layers]
        x, weights = self.decoder_layers(x, memories=memories, memory_mask=enc.mask, need_weights=need_weights, packing=packing)
        x = self.decoder_norm(x)
        return (x if packing is None else packing.unpack(x)), weights

    def project(self, hidden: Tensor, restricted: tuple[Tensor, nn.Module] | None = None) -> Tensor:
        """§3.4 pre-softmax linear transformation: [..., d_model] -> logits [..., tgt_vocab]. With
        `restricted` (ids, their projection: a shortlist), the logits of those ids alone, [..., len(ids)]."""
        if restricted is not None:
            ids, proj = restricted
            logits = proj(hidden)
            return logits if self.final_logits_bias is None else logits + self.final_logits_bias[ids]
        logits = self.output_proj(hidden)
        return logits if self.final_logits_bias is None else logits + self.final_logits_bias

    def output_projection(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias (or None) that `project` applies, logits = hidden Wᵀ + b: what training's
        loss multiplies itself, a block of rows at a time (train.loss.projected_label_smoothed_nll)."""
        return self.output_proj.weight, self.final_logits_bias

    def restrict_output(self, state: Seq2SeqState, ids: Tensor) -> None:
        """Let a search's steps compute the logits of these target ids alone (generate.shortlist)."""
        state.output = (ids, self.output_proj.rows(ids))

    def forward(self, src_tokens: Tensor, tgt_in: Tensor) -> Tensor:
        """src_tokens: [B, S], tgt_in: [B, T] -> logits [B, T, tgt_vocab]."""
        hidden, _ = self.decode(tgt_in, self.encode(src_tokens))
        return self.project(hidden)

    # ----- Incremental decoding (generate.search's protocol): start, then step
    def start(self, src_tokens: Tensor, enc: EncoderOut | None = None) -> Seq2SeqState:
        """Encode the sources (or take their `enc`) and set up the decoder's state."""
        enc = enc if enc is not None else self.encode(src_tokens)
        cross_kv = [enc.keys_values(block) for block in self.decoder_layers]
        return Seq2SeqState(KVCache.for_layers(len(self.decoder_layers), enc.mask.size(0)), cross_kv, enc.mask)

    def step(self, tokens: Tensor, state: Seq2SeqState, need_weights: bool = False):
        """tokens: [N, L], the next L target tokens of each hypothesis (L = 1 in a search; more for a
        prefill of a given prefix), N = B·G. Returns the logits after the last of them, [N, tgt_vocab]
        (and with need_weights the encoder-decoder attention per layer, [N, h, L, S])."""
        x = self.embed(tokens, self.tgt_embed, offset=state.length)  # [N, L, d_model]
        x, weights = self.decoder_layers(
            x, caches=state.kv_caches, memories=state.cross_kv, memory_mask=state.memory_mask, need_weights=need_weights
        )
        state.length += tokens.size(1)
        logits = self.project(self.decoder_norm(x[:, -1]), state.output)
        return (logits, weights) if need_weights else logits

    # ----- Bookkeeping
    def cross_attention_layers(self) -> int:
        """How many layers of encoder-decoder attention `decode(need_weights=True)` returns."""
        return len(self.decoder_layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared tensors count once

    def forward_flops(self, src_tokens: float, tgt_tokens: float, src_len: float, tgt_len: float) -> float:
        """Matmul FLOPs (2 per multiply-add) of one forward pass over src_tokens source and tgt_tokens
        target tokens (real tokens, no padding) in sequences of mean length src_len and tgt_len.
        Causal self-attention counts half its square. A training step costs about 3× this."""
        c = self.config
        d, f = c.d_model, c.d_ff
        attn_proj, ffn = 2 * 4 * d * d, 2 * 2 * d * f
        enc_token = c.n_encoder_layers * (attn_proj + ffn + 2 * 2 * src_len * d)
        enc_dec_kv = c.n_decoder_layers * 2 * 2 * d * d  # per source token, once
        dec_token = c.n_decoder_layers * (attn_proj + 2 * 2 * d * d + ffn + 2 * 2 * (tgt_len / 2) * d + 2 * 2 * src_len * d)
        dec_token += 2 * d * c.tgt_vocab_size  # output projection
        return src_tokens * (enc_token + enc_dec_kv) + tgt_tokens * dec_token
