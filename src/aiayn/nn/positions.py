"""§3.5 Positional Encoding: fixed sinusoids (1-D for sequences, 2-D for grids of image patches)
or learned embeddings (the paper's Table 3, row E)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoid_table(n_positions: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """§3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    layout="interleaved" is the paper's (sin on even, cos on odd dimensions); "concat" puts all
    sines first, then all cosines (tensor2tensor, Marian/OPUS-MT): the same functions, permuted.
    Returns [n_positions, d_model].
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = pos * inv_freq  # [P, d/2]
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    if layout == "interleaved":
        table[:, 0::2], table[:, 1::2] = torch.sin(angles), torch.cos(angles[:, : d_model // 2])
    elif layout == "concat":
        half = (d_model + 1) // 2
        table[:, :half], table[:, half:] = torch.sin(angles), torch.cos(angles[:, : d_model // 2])
    else:
        raise ValueError(f"unknown positional layout {layout!r} (interleaved or concat)")
    return table.float()


def sinusoid_table_2d(height: int, width: int, d_model: int) -> Tensor:
    """The 2-D form for a grid of patches (ViT, MAE, DiT): half the dimensions encode the row,
    half the column, each with the 1-D sinusoids of §3.5 in the concat layout. Returns
    [height·width, d_model], row-major (the order in which patches are flattened)."""
    if d_model % 4:
        raise ValueError(f"2-D sinusoids need d_model divisible by 4, got {d_model}")
    rows = sinusoid_table(height, d_model // 2, "concat")  # [H, d/2]
    cols = sinusoid_table(width, d_model // 2, "concat")  # [W, d/2]
    grid = torch.cat([rows[:, None, :].expand(height, width, -1), cols[None, :, :].expand(height, width, -1)], dim=-1)
    return grid.reshape(height * width, d_model)


class PositionalEncoding(nn.Module):
    """§3.5: fixed sinusoids (extended on demand: they extrapolate) or learned embeddings."""

    def __init__(self, d_model: int, max_positions: int, kind: str = "sinusoidal", layout: str = "interleaved"):
        super().__init__()
        self.kind, self.layout, self.d_model = kind, layout, d_model
        if kind == "learned":
            self.embedding = nn.Embedding(max_positions, d_model)
        elif kind == "sinusoidal":
            self.register_buffer("table", sinusoid_table(max_positions, d_model, layout), persistent=False)
        else:
            raise ValueError(f"unknown positional encoding {kind!r} (sinusoidal or learned)")

    @property
    def max_positions(self) -> int | None:
        """The longest sequence it encodes (None: any, sinusoids extrapolate)."""
        return self.embedding.num_embeddings if self.kind == "learned" else None

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings of positions offset … offset+length−1: [length, d_model]."""
        end = offset + length
        if self.kind == "learned":
            if end > self.embedding.num_embeddings:
                raise ValueError(f"position {end - 1} is beyond max_positions={self.embedding.num_embeddings}")
            return self.embedding.weight[offset:end]
        if end > self.table.size(0):  # sinusoids extrapolate: grow the table
            self.table = sinusoid_table(max(end, 2 * self.table.size(0)), self.d_model, self.layout).to(self.table.device)
        return self.table[offset:end]

    def at(self, positions: Tensor) -> Tensor:
        """Encodings of given positions (any shape of ids, e.g. [N, L] when rows start at different
        positions): [..., d_model]."""
        end = int(positions.max()) + 1 if positions.numel() else 0
        if self.kind == "learned":
            if end > self.embedding.num_embeddings:
                raise ValueError(f"position {end - 1} is beyond max_positions={self.embedding.num_embeddings}")
            return self.embedding(positions)
        self.forward(0, end)  # grows the table where needed
        return self.table[positions]
