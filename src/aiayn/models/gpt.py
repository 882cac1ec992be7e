"""GPT: the Transformer's decoder alone, trained to predict the next token (Radford et al. 2018,
"Improving Language Understanding by Generative Pre-Training"; GPT-2: Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners"), assembled from the block set.

    tokens ─► embed + positions ─► Stack of N Block(causal, pre_norm) ─► LayerNorm ─► Linear (tied) ─► logits

The blocks are the paper's decoder layers without encoder-decoder attention (§3.1, §3.2.3), in
the pre-norm arrangement of GPT-2 (§2.3 of its paper: "layer normalization was moved to the input
of each sub-block ... an additional layer normalization was added after the final self-attention
block"). Incremental decoding (`start`, `step`) follows generate.search's protocol, with prompts
of unequal length left-padded and masked, so a batch of prompts decodes as each would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aiayn import schema
from aiayn.models.config import ModelConfig, check_heads
from aiayn.nn import Block, Dropout, KVCache, Linear, PositionalEncoding, Stack, TokenEmbedding
from aiayn.nn.cache import reorder_caches


@dataclass
class GPTConfig(ModelConfig):
    """Hyper-parameters, named as the paper names them (d_model, n_heads, d_ff, N = n_layers)."""

    ARCHITECTURE = "gpt"

    vocab_size: int = 50257
    d_model: int = 768
    n_heads: int = 12
    d_ff: int = 3072
    n_layers: int = 12
    context: int = 1024  # the longest sequence the model attends over (GPT-2's n_positions)
    dropout: float = 0.1  # embeddings and sub-layer outputs (GPT-2's embd_pdrop, resid_pdrop)
    attn_dropout: float = 0.1  # attention probabilities (attn_pdrop)
    activation: str = "gelu_tanh"  # GPT-2's "gelu_new"; gelu (erf) or relu as options
    positional: str = "learned"  # learned (GPT-2) | sinusoidal (§3.5)
    tie_output: bool = True  # the output projection shares the token embedding (§3.4)
    bias: bool = True
    layer_norm_eps: float = 1e-5
    eos_id: int = 3  # the document separator: ends a generation
    bos_id: int = 3  # put before every prompt (our datasets start each document after a separator); -1: nothing (GPT-2)
    pad_id: int = 0  # fills left-padded prompts (never attended to, never produced)

    @classmethod
    def check(cls, values: dict, where: str = "") -> None:
        from aiayn.nn import ACTIVATIONS

        S = schema
        rules = {
            "vocab_size": S.AT_LEAST_1,
            "d_model": S.AT_LEAST_1,
            "n_heads": S.AT_LEAST_1,
            "d_ff": S.AT_LEAST_1,
            "n_layers": S.AT_LEAST_1,
            "context": S.AT_LEAST_1,
            "dropout": S.PROBABILITY,
            "attn_dropout": S.PROBABILITY,
            "activation": S.Rule(choices=tuple(ACTIVATIONS)),
            "positional": S.Rule(choices=("learned", "sinusoidal")),
            "layer_norm_eps": S.POSITIVE,
            "eos_id": S.AT_LEAST_0,
            "bos_id": S.Rule(low=-1),
            "pad_id": S.AT_LEAST_0,
        }
        schema.check(cls, values, where, rules, what="model config")
        check_heads(values, where)


@dataclass
class GPTState:
    """Incremental decoding of N hypotheses (G per prompt, prompt-major); follows nn.DecodingState.

    kv_caches[l]: layer l's keys and values so far; length: the tokens each row has taken in
    (padding included). Where prompts were padded, keep: [N, T] True at the tokens that may be
    attended to (False at left padding) and position: [N] each row's next position (rows start at
    different positions); without padding every row is at position `length`."""

    kv_caches: list[KVCache]
    prompt_mask: Tensor | None  # [B, P] True at real prompt tokens; None when no prompt is padded
    keep: Tensor | None = None
    position: Tensor | None = None
    sentences: int = 0
    length: int = 0
    furthest: int = 0  # the furthest position a remaining row has reached (known on the host)

    def _rows(self, rows: Tensor) -> None:
        if self.keep is not None:
            self.keep, self.position = self.keep.index_select(0, rows), self.position.index_select(0, rows)

    def reorder(self, order: Tensor) -> None:
        reorder_caches(self.kv_caches, order)
        self._rows(order)

    def select(self, sentences: Tensor) -> None:
        group = self.kv_caches[0].rows // self.sentences
        rows = (sentences[:, None] * group + torch.arange(group, device=sentences.device)).reshape(-1)
        for c in self.kv_caches:
            c.select(rows)
        self._rows(rows)
        self.sentences = sentences.numel()
        if self.position is not None and self.position.numel():
            self.furthest = int(self.position.max())  # of the rows that remain


class GPT(nn.Module):
    """A decoder-only Transformer language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = cfg = config
        self.token_embed = TokenEmbedding(cfg.vocab_size, cfg.d_model, scale=False)  # GPT-2 adds positions to unscaled embeddings
        self.positions = PositionalEncoding(cfg.d_model, cfg.context, cfg.positional, "interleaved")
        self.dropout = Dropout(cfg.dropout)
        self.layers = Stack(
            Block(
                cfg.d_model,
                cfg.n_heads,
                cfg.d_ff,
                causal=True,
                pre_norm=True,
                dropout=cfg.dropout,
                attn_dropout=cfg.attn_dropout,
                activation=cfg.activation,
                bias=cfg.bias,
                norm_eps=cfg.layer_norm_eps,
            )
            for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.output_proj = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_output:
            self.output_proj.weight = self.token_embed.weight

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the projections into the
        residual stream scaled by 1/√(2N) ("to account for the accumulation on the residual path")."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.layers:
            for proj in (block.self_attn.out_proj, block.ffn.w2):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layers))

    # ----- training / scoring: every position at once
    def hidden(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, list]:
        """tokens: [B, T] -> the final hidden states [B, T, d_model] (and with need_weights the
        self-attention weights per layer, [B, h, T, T])."""
        self._check_length(tokens.size(1))
        x = self.dropout(self.token_embed(tokens) + self.positions(tokens.size(1)))
        x, weights = self.layers(x, need_weights=need_weights)
        return self.final_norm(x), weights

    def project(self, hidden: Tensor) -> Tensor:
        """[..., d_model] -> logits [..., vocab_size]."""
        return self.output_proj(hidden)

    def output_projection(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias (or None) that `project` applies, logits = hidden Wᵀ + b: what training's
        loss multiplies itself, a block of rows at a time (train.loss.projected_label_smoothed_nll)."""
        return self.output_proj.weight, None

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: [B, T] -> next-token logits at every position, [B, T, vocab_size]."""
        return self.project(self.hidden(tokens)[0])

    def _check_length(self, length: int) -> None:
        if self.config.positional == "learned" and length > self.config.context:
            raise ValueError(f"{length} tokens is longer than the model's context of {self.config.context}")

    # ----- incremental decoding (generate.search's protocol): start, then step
    def start(self, prompt_mask: Tensor | None) -> GPTState:
        """The state before a batch of left-padded prompts: prompt_mask [B, P], True at real tokens
        (None: no prompt is padded). The prompts themselves come as the first step's tokens."""
        B = 0 if prompt_mask is None else prompt_mask.size(0)
        padded = prompt_mask is not None and not bool(prompt_mask.all())
        caches = KVCache.for_layers(len(self.layers), None if padded else B)  # (beam search over unpadded prompts: per sentence)
        return GPTState(caches, prompt_mask if padded else None, sentences=B)

    def step(self, tokens: Tensor, state: GPTState, need_weights: bool = False):
        """tokens: [N, L], the next L tokens of each row (L = 1 in a search, the prompt at the first
        step). Returns the logits after the last of them, [N, vocab_size] (and with need_weights the
        self-attention per layer, [N, h, L, T])."""
        N, L = tokens.shape
        device = tokens.device
        first = state.length == 0
        if first:  # the prompts (repeated G times each for a beam)
            state.sentences = state.sentences or N
            if state.prompt_mask is not None:
                state.keep = state.prompt_mask.to(device).repeat_interleave(N // state.sentences, 0)
                state.position = state.keep.long().sum(1)  # [N]: each row's next position (its first real token is at 0)
                state.furthest = int(state.position.max())
            else:
                state.furthest = L
        else:
            state.furthest += L
        self._check_length(state.furthest)
        if state.keep is None:  # no padding: every row is at the same position
            positions = self.positions(L, state.length)  # [L, d_model]
            mask = None
        else:
            if first:
                position = (state.keep.long().cumsum(1) - 1).clamp(min=0)  # [N, L]
            else:
                position = state.position[:, None] + torch.arange(L, device=device)
                state.position = state.position + L
                state.keep = torch.cat([state.keep, state.keep.new_ones(N, L)], 1)
            positions = self.positions.at(position)  # [N, L, d_model]
            # padding is never attended to; a padding query attends to itself (its output is unused)
            T = state.keep.size(1)
            mask = state.keep[:, None, None, :].expand(N, 1, L, T).clone()
            mask[:, 0, torch.arange(L, device=device), torch.arange(T - L, T, device=device)] = True
        state.length += L
        x = self.dropout(self.token_embed(tokens) + positions)
        x, weights = self.layers(x, caches=state.kv_caches, mask=mask, need_weights=need_weights)
        logits = self.project(self.final_norm(x[:, -1]))
        return (logits, weights) if need_weights else logits

    # ----- bookkeeping
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward_flops(self, tokens: float, length: float) -> float:
        """Matmul FLOPs (2 per multiply-add) of a forward pass over `tokens` tokens in windows of
        `length`; causal attention counts half its square. A training step costs about 3× this."""
        c = self.config
        d = c.d_model
        per_token = c.n_layers * (2 * 4 * d * d + 2 * 2 * d * c.d_ff + 2 * 2 * (length / 2) * d) + 2 * d * c.vocab_size
        return tokens * per_token
