"""Vocabulary shortlists: decode over the target words a batch's source words suggest.

The output projection is the largest product of a decoding step where the target vocabulary is
large (32k pieces × d_model per hypothesis per step). As CTranslate2's `vmap` and Marian's
lexical shortlists do, the projection can be restricted to a batch's candidates: the `frequent`
most common target pieces, the special ids, and for every piece of the batch's sources its `k`
most associated target pieces. The softmax then runs over the candidates alone; every other
piece gets log-probability −∞.

The association table is learned by `aiayn prepare` from the binarized training pairs
(data.lexicon; `shortlist.safetensors` in the dataset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class Shortlist:
    table: Tensor  # [src_vocab, TABLE_K] target ids, −1 padding
    frequent: Tensor  # [FREQUENT]
    always: Tensor  # ids every batch keeps (the special ids)
    k: int = 32  # candidates taken per source piece
    n_frequent: int = 100  # most frequent target pieces always kept

    @classmethod
    def load(cls, path: str | Path, *, src_sha256: str, tgt_sha256: str, always: list[int], k: int = 32, n_frequent: int = 100):
        """Read `shortlist.safetensors` (a dataset's, or the dataset directory), refusing one learned
        with other vocabularies than the model's."""
        from safetensors import safe_open

        path = Path(path)
        path = path / "shortlist.safetensors" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no shortlist at {path} (aiayn prepare writes shortlist.safetensors in the dataset)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                table, frequent = f.get_tensor("table"), f.get_tensor("frequent")
            vocab = json.loads(meta["vocab"])
        except Exception as e:
            raise ValueError(f"{path} is not an aiayn shortlist: {e}") from None
        if (vocab.get("src_sha256"), vocab.get("tgt_sha256")) != (src_sha256, tgt_sha256):
            raise ValueError(f"{path} was learned with other vocabularies than this model's (prepare the model's data again)")
        if not 1 <= k <= table.size(1):
            raise ValueError(f"shortlist size {k}: between 1 and {table.size(1)}")
        return cls(table.long(), frequent.long(), torch.tensor(sorted(set(always)), dtype=torch.long), k, n_frequent)

    @classmethod
    def for_model(cls, path: str | Path, model, src_tokenizer, tgt_tokenizer, k: int = 32, n_frequent: int = 100) -> "Shortlist":
        """The shortlist at `path` for a translation model and its tokenizers (EOS and UNK always kept)."""
        c = model.config
        return cls.load(
            path,
            src_sha256=src_tokenizer.sha256,
            tgt_sha256=tgt_tokenizer.sha256,
            always=[c.eos_id, tgt_tokenizer.unk_id],
            k=k,
            n_frequent=n_frequent,
        )

    def vocabulary(self, src: Tensor, pad: int) -> Tensor:
        """The sorted target ids a batch of sources [B, S] may produce (its candidates)."""
        pieces = src[src.ne(pad)].unique().cpu()
        pieces = pieces[pieces < self.table.size(0)]
        suggested = self.table[pieces, : self.k].reshape(-1)
        ids = torch.cat([self.always, self.frequent[: self.n_frequent], suggested[suggested.ge(0)]])
        return ids.unique().to(src.device)


class Shortlisted(torch.nn.Module):
    """A model (or ensemble) searched over a batch's candidate ids alone.

    The search runs in the candidates' own numbering (0 … n−1, `ids` sorted): the model's logits
    are computed for them alone ([N, n], no vocabulary-sized tensor anywhere), the tokens a step is
    fed are mapped back to the model's ids, and so are the hypotheses (`to_model_ids`). Padding
    the start symbol and EOS are among the candidates, so that `special` has a number for each; the
    searches never produce padding."""

    def __init__(self, model, ids: Tensor, special):
        super().__init__()
        from aiayn.generate.search import SpecialTokens

        keep = torch.tensor([special.pad, special.start, special.eos], device=ids.device)
        self.model, self.config = model, model.config
        self.ids = torch.cat([ids, keep]).unique()  # sorted
        where = {int(t): n for n, t in enumerate(self.ids.tolist())}
        self.special = SpecialTokens(pad=where[special.pad], eos=where[special.eos], start=where[special.start])

    def start(self, inputs: Tensor):
        state = self.model.start(inputs)
        self.model.restrict_output(state, self.ids)
        return state

    def step(self, tokens: Tensor, state, **kw):
        return self.model.step(self.ids[tokens], state, **kw)

    def to_model_ids(self, tokens: list[int]) -> list[int]:
        ids = self.ids.tolist()
        return [ids[t] for t in tokens]
