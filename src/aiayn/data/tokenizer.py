"""Subword vocabulary: sentencepiece (BPE by default, as the paper's byte-pair encoding, §5.1).

The model file is kept as bytes: it travels inside datasets and checkpoints, so a model can
never meet the wrong vocabulary. Ids 0-3 are <pad>, <unk>, <s>, </s> for every vocabulary
trained here (imported models may differ; the ids are read from the model, never assumed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    def __init__(self, model_proto: bytes):
        self.proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.proto)
        except Exception as e:  # sentencepiece raises a bare RuntimeError
            raise ValueError(f"not a sentencepiece model: {e}") from None
        self.pad_id, self.unk_id = self.sp.pad_id(), self.sp.unk_id()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    @staticmethod
    def train(
        files: Iterable[str | Path],
        vocab_size: int,
        model_type: str = "bpe",
        *,
        max_sentences: int = 2_000_000,
        character_coverage: float = 0.9995,
        normalization: str = "nmt_nfkc",
        seed_sentencepieces: int | None = None,
        threads: int | None = None,
    ) -> "Tokenizer":
        """Learn a vocabulary with sentencepiece's own trainer from text files (one sentence a line).

        Byte fallback is on, so characters outside the vocabulary become byte pieces, never <unk>.
        At most max_sentences lines (a random sample) are read, which bounds memory.
        """
        import io

        model = io.BytesIO()
        extra = {"seed_sentencepiece_size": seed_sentencepieces} if seed_sentencepieces else {}
        spm.SentencePieceTrainer.train(
            input=",".join(str(f) for f in files),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=True,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            normalization_rule_name=normalization,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=1 << 16,
            num_threads=threads or os.cpu_count() or 1,
            minloglevel=2,
            **extra,
        )
        return Tokenizer(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.proto).hexdigest()

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.proto)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int)

    def encode_pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a token sequence; special ids are dropped."""
        specials = {self.pad_id, self.bos_id, self.eos_id}
        return self.sp.decode([int(i) for i in ids if int(i) not in specials])

    def __getstate__(self):  # picklable for worker processes
        return {"proto": self.proto}

    def __setstate__(self, state):
        self.__init__(state["proto"])
