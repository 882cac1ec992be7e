"""RNNsearch (Bahdanau, Cho and Bengio 2014, "Neural Machine Translation by Jointly Learning to
Align and Translate"): the recurrent encoder-decoder with attention that the Transformer replaced,
assembled from the block set's additive attention, embeddings and dropout.

    src tokens ─► embed ─► bidirectional GRU ─► annotations h_j = [h→_j; h←_j] ──────────┐
    y_{i-1} ─► embed ─► GRU₁ ─► s'_i ─► additive attention over h (§3.1) ─► c_i ─► GRU₂ ─► s_i
                 └──────────────────────── deep output tanh(W_y y + W_s s_i + W_c c_i) ─► logits

The decoder is the conditional GRU of Nematus and Marian's `s2s` (Sennrich et al. 2017, "Nematus:
a Toolkit for Neural Machine Translation", §2): the attention reads the state after a first GRU
transition on the previous word, and a second GRU takes in the context vector — Bahdanau's
decoder with the attention moved between two half-steps. The initial state is tanh(W_init · mean_j
h_j) (Nematus) and the deep output layer tanh instead of Bahdanau's maxout (Appendix A.2.2).

The model speaks the translation pipeline's protocol (encode / decode / project for training;
start / step with a state that reorders and selects rows for search), so training, averaging,
every search, ensembles, shortlists, alignments and heat maps work on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aiayn import schema
from aiayn.models.config import ModelConfig
from aiayn.models.seq2seq import EncoderOut
from aiayn.nn import AdditiveAttention, Dropout, Linear, TokenEmbedding
from aiayn.nn.cache import hypothesis_rows


@dataclass
class RNNSearchConfig(ModelConfig):
    """Hyper-parameters; the defaults are the paper's (Appendix A: m = 620, n = n' = 1000, l = 500)."""

    ARCHITECTURE = "rnnsearch"

    src_vocab_size: int = 30000
    tgt_vocab_size: int = 30000
    d_embed: int = 620  # m: word embeddings
    d_hidden: int = 1000  # n: each direction of the encoder, and the decoder state
    d_attn: int = 1000  # n': the additive attention's hidden layer
    d_output: int = 500  # l: the deep output layer
    n_encoder_layers: int = 1  # stacked bidirectional GRU layers (the paper: 1)
    dropout: float = 0.2  # embeddings, annotations, the deep output (and between encoder layers)
    share_embeddings: bool = True  # one embedding matrix for source and target (joint vocabulary)
    tie_output: bool = False  # the output projection shares the target embedding (needs d_output == d_embed)
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    decoder_start_id: int = -1  # first decoder input; -1 means bos_id

    def __post_init__(self):
        if self.decoder_start_id < 0:
            self.decoder_start_id = self.bos_id
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary, but src_vocab_size={self.src_vocab_size} "
                f"and tgt_vocab_size={self.tgt_vocab_size}; set share_embeddings=False"
            )
        if self.tie_output and self.d_output != self.d_embed:
            raise ValueError(f"tie_output needs d_output == d_embed, got d_output={self.d_output} and d_embed={self.d_embed}")

    @classmethod
    def check(cls, values: dict, where: str = "") -> None:
        S = schema
        rules = {
            name: S.AT_LEAST_1
            for name in ("src_vocab_size", "tgt_vocab_size", "d_embed", "d_hidden", "d_attn", "d_output", "n_encoder_layers")
        }
        rules.update(dropout=S.PROBABILITY, pad_id=S.AT_LEAST_0, unk_id=S.AT_LEAST_0, bos_id=S.AT_LEAST_0, eos_id=S.AT_LEAST_0)
        schema.check(cls, values, where, rules, what="model config")


def gru_update(input_gates: Tensor, state: Tensor, hidden: Linear) -> Tensor:
    """One GRU transition (Cho et al. 2014; PyTorch's gate layout r, z, n), given the input's part
    of the gates, W_i x + b_i ([..., 3H]), which teacher forcing computes for every step at once:
    r = σ(i_r + h_r), z = σ(i_z + h_z), n = tanh(i_n + r ⊙ h_n), s' = (1 − z) ⊙ n + z ⊙ s."""
    i_r, i_z, i_n = input_gates.chunk(3, -1)
    h_r, h_z, h_n = hidden(state).chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(torch.addcmul(i_n, r, h_n))
    return torch.lerp(n, state, z)


@dataclass
class RNNState:
    """Incremental decoding of N = B·G hypotheses (G per sentence, sentence-major); follows
    nn.DecodingState. The recurrent state is one row per hypothesis; the annotations, their
    attention keys and the mask stay one row per sentence."""

    state: Tensor  # [B or N, d_hidden]: s_{i-1} (one row per sentence until the first step)
    memory: Tensor  # [B, S, 2·d_hidden]: the annotations h_j
    keys: Tensor  # [B, S, d_attn]: U h_j
    mask: Tensor  # [B, S], True at real source tokens
    output: tuple[Tensor, nn.Module] | None = None  # a shortlist: (target ids, the projection to them alone)

    def reorder(self, order: Tensor) -> None:
        """Beam search: hypothesis n now continues hypothesis order[n] (of the same sentence)."""
        self.state = self.state.index_select(0, order)

    def select(self, sentences: Tensor) -> None:
        """Keep only the given source sentences (with all their hypotheses)."""
        group = self.state.size(0) // self.memory.size(0)
        self.state = self.state.index_select(0, hypothesis_rows(sentences, group))
        self.memory, self.keys, self.mask = (t.index_select(0, sentences) for t in (self.memory, self.keys, self.mask))


class RNNSearch(nn.Module):
    """The encoder-decoder of Bahdanau et al. (2014) §3, with Nematus's conditional GRU decoder."""

    def __init__(self, config: RNNSearchConfig):
        super().__init__()
        self.config = cfg = config
        H = cfg.d_hidden
        self.src_embed = TokenEmbedding(cfg.src_vocab_size, cfg.d_embed, cfg.pad_id, scale=False)
        self.tgt_embed = (
            self.src_embed if cfg.share_embeddings else TokenEmbedding(cfg.tgt_vocab_size, cfg.d_embed, cfg.pad_id, scale=False)
        )
        self.dropout = Dropout(cfg.dropout)
        # §3.2 Encoder: a bidirectional RNN; the annotation of x_j is both directions' states
        self.encoder = nn.GRU(
            cfg.d_embed,
            H,
            num_layers=cfg.n_encoder_layers,
            bidirectional=True,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_encoder_layers > 1 else 0.0,
        )
        self.init_state = Linear(2 * H, H)  # s_0 = tanh(W_init · mean_j h_j)
        # §3.1 Decoder: GRU₁ on the previous word, attention, GRU₂ on the context
        self.gru1_input, self.gru1_hidden = Linear(cfg.d_embed, 3 * H), Linear(H, 3 * H)
        self.attention = AdditiveAttention(d_query=H, d_memory=2 * H, d_attn=cfg.d_attn)
        self.gru2_input, self.gru2_hidden = Linear(2 * H, 3 * H), Linear(H, 3 * H)
        # Appendix A.2.2: the deep output t_i from the previous word, the state and the context
        self.out_word = Linear(cfg.d_embed, cfg.d_output, bias=False)
        self.out_state = Linear(H, cfg.d_output)
        self.out_context = Linear(2 * H, cfg.d_output, bias=False)
        self.output_proj = Linear(cfg.d_output, cfg.tgt_vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_output:
            self.output_proj.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        """Appendix A.2: recurrent matrices orthogonal, the others N(0, 0.01²) (Xavier here: the
        embeddings and projections are smaller than the paper's), biases zero."""
        for name, p in self.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            elif "weight_hh" in name or name.startswith(("gru1_hidden", "gru2_hidden")):
                for part in p.data.chunk(3):  # r, z, n: each square block orthogonal
                    nn.init.orthogonal_(part)
            elif p.dim() == 2:
                nn.init.xavier_uniform_(p)
        for embedding in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(embedding.weight, std=self.config.d_embed**-0.5)
            nn.init.zeros_(embedding.weight[self.config.pad_id])

    # ----- §3.2 Encoder
    def encode(self, src_tokens: Tensor, src_mask: Tensor | None = None, need_weights: bool = False) -> EncoderOut:
        """src_tokens: [B, S] right-padded. The annotations [B, S, 2·d_hidden] (zeros at padding);
        a recurrent encoder has no self-attention to show, so attention_weights stays empty."""
        if src_mask is None:
            src_mask = src_tokens.ne(self.config.pad_id)
        lengths = src_mask.sum(1).clamp(min=1).cpu()
        x = self.dropout(self.src_embed(src_tokens))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=src_tokens.size(1))
        return EncoderOut(self.dropout(states), src_mask[:, None, None, :])

    def initial_state(self, enc: EncoderOut) -> Tensor:
        mask = enc.mask[:, 0, 0, :, None].to(enc.states.dtype)  # [B, S, 1]
        mean = (enc.states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.tanh(self.init_state(mean))  # [B, d_hidden]

    def cell(self, word_gates: Tensor, state: Tensor, keys: Tensor, memory: Tensor, mask: Tensor):
        """One decoder step for B·G rows (G per sentence): GRU₁, attention, GRU₂. word_gates: GRU₁'s
        input gates of the previous words [N, 3H]; state: s_{i-1} [N, H]; keys, memory, mask: per
        sentence. Returns s_i [N, H], the context c_i [N, 2H] and the attention weights [N, S]."""
        B, N = memory.size(0), state.size(0)
        s1 = gru_update(word_gates, state, self.gru1_hidden)
        context, weights = self.attention(s1.view(B, N // B, -1), keys, memory, mask)
        context, weights = context.reshape(N, -1), weights.reshape(N, -1)
        return gru_update(self.gru2_input(context), s1, self.gru2_hidden), context, weights

    def deep_output(self, words: Tensor, states: Tensor, contexts: Tensor) -> Tensor:
        """t_i = tanh(W_y E y_{i-1} + W_s s_i + W_c c_i), with dropout: what `project` maps to logits."""
        return self.dropout(torch.tanh(self.out_word(words) + self.out_state(states) + self.out_context(contexts)))

    # ----- §3.1 Decoder (teacher forcing: the recurrence runs step by step, the rest at once)
    def decode(self, tgt_in: Tensor, enc: EncoderOut, need_weights: bool = False) -> tuple[Tensor, list]:
        """tgt_in: [B, T] right-padded decoder inputs. Returns the deep output [B, T, d_output] and,
        with need_weights, the attention as one layer of one head, [[B, 1, T, S]]."""
        words = self.dropout(self.tgt_embed(tgt_in))  # [B, T, d_embed]
        # every step's input gates in one product; unbind, not gates[:, t]: the backward of T slices would
        # fill and add T zero tensors the size of all the gates (a 60×34-token step: 317 ms against 341)
        gates = self.gru1_input(words).unbind(1)
        keys, mask = self.attention.keys(enc.states), enc.mask[:, 0, 0, :]
        state = self.initial_state(enc)
        states, contexts, weights = [], [], []
        for step_gates in gates:
            state, context, w = self.cell(step_gates, state, keys, enc.states, mask)
            states.append(state)
            contexts.append(context)
            weights.append(w)
        hidden = self.deep_output(words, torch.stack(states, 1), torch.stack(contexts, 1))
        return hidden, ([torch.stack(weights, 1)[:, None]] if need_weights else [])

    def project(self, hidden: Tensor, restricted: tuple[Tensor, nn.Module] | None = None) -> Tensor:
        """The deep output to logits [..., tgt_vocab] (or to a shortlist's ids alone)."""
        return restricted[1](hidden) if restricted is not None else self.output_proj(hidden)

    def output_projection(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias (or None) that `project` applies, logits = hidden Wᵀ + b: what training's
        loss multiplies itself, a block of rows at a time (train.loss.projected_label_smoothed_nll)."""
        return self.output_proj.weight, None

    def restrict_output(self, state: RNNState, ids: Tensor) -> None:
        state.output = (ids, self.output_proj.rows(ids))

    def forward(self, src_tokens: Tensor, tgt_in: Tensor) -> Tensor:
        hidden, _ = self.decode(tgt_in, self.encode(src_tokens))
        return self.project(hidden)

    # ----- Incremental decoding (generate.search's protocol)
    def start(self, src_tokens: Tensor, enc: EncoderOut | None = None) -> RNNState:
        enc = enc if enc is not None else self.encode(src_tokens)
        return RNNState(self.initial_state(enc), enc.states, self.attention.keys(enc.states), enc.mask[:, 0, 0, :])

    def step(self, tokens: Tensor, state: RNNState, need_weights: bool = False):
        """tokens: [N, L] (L > 1: a prefix fed at once). Returns the logits after the last, [N, V]
        (with need_weights also the attention, [[N, 1, L, S]])."""
        N, B = tokens.size(0), state.memory.size(0)
        if state.state.size(0) != N:  # the first step: each sentence's state to its G hypotheses
            state.state = state.state.repeat_interleave(N // B, 0)
        words = self.tgt_embed(tokens)
        gates = self.gru1_input(words)
        weights = []
        for t in range(tokens.size(1)):
            state.state, context, w = self.cell(gates[:, t], state.state, state.keys, state.memory, state.mask)
            weights.append(w)
        logits = self.project(self.deep_output(words[:, -1], state.state, context), state.output)
        return (logits, [torch.stack(weights, 1)[:, None]]) if need_weights else logits

    # ----- Bookkeeping
    def cross_attention_layers(self) -> int:
        return 1

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
