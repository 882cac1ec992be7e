"""§5.4 Label Smoothing: "we employed label smoothing of value ε_ls = 0.1 [Szegedy et al.]. This
hurts perplexity, as the model learns to be more unsure, but improves accuracy and BLEU score."

The target distribution puts 1 − ε on the reference token and spreads ε uniformly over the
whole vocabulary (Szegedy et al., 2016):
    loss = (1 − ε) · (−log p(y)) + ε · mean_k(−log p(k))
Padding positions are excluded before the loss (the caller passes real tokens only).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def label_smoothed_nll(logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """logits: [N, V] for N real target tokens; target: [N]. Returns (smoothed loss, NLL), each summed
    over the N tokens, computed in fp32 (one log-softmax serves both)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)  # [N, V]
    nll = -lprobs.gather(1, target[:, None]).squeeze(1)  # [N]
    smooth = -lprobs.mean(dim=-1)  # [N]: cross-entropy against the uniform distribution
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    return loss.sum(), nll.detach().sum()
