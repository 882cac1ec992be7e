"""Subword vocabulary: sentencepiece (BPE by default, as the paper's byte-pair encoding, §5.1).

The model file is kept as bytes: it travels inside datasets and checkpoints, so a model can
never meet the wrong vocabulary. Ids 0-3 are <pad>, <unk>, <s>, </s> for every vocabulary
trained here (imported models may differ; the ids are read from the model, never assumed).

A tokenizer may also carry a piece → id mapping (`vocab`), as Marian / OPUS-MT models do with
their vocab.json: sentencepiece then only splits text into pieces, and the ids are the
mapping's (a piece outside it is <unk>). Without a mapping, ids are sentencepiece's own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    def __init__(self, model_proto: bytes, vocab: dict[str, int] | None = None):
        self.proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.proto)
        except Exception as e:  # sentencepiece raises a bare RuntimeError
            raise ValueError(f"not a sentencepiece model: {e}") from None
        self.vocab = None
        if vocab is None:
            self.pad_id, self.unk_id = self.sp.pad_id(), self.sp.unk_id()
            self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        else:
            self._set_vocab(vocab)

    def _set_vocab(self, vocab: dict[str, int]) -> None:
        """A piece -> id mapping (Marian's vocab.json). Special ids are its "<unk>", "</s>", "<pad>" and
        "<s>" entries; without "<pad>" padding uses "</s>", without "<s>" the start symbol is <pad>."""
        vocab = {str(k): int(v) for k, v in vocab.items()}
        for piece in ("<unk>", "</s>"):
            if piece not in vocab:
                raise ValueError(f"the vocabulary mapping has no {piece!r} entry")
        if min(vocab.values()) < 0:
            raise ValueError("the vocabulary mapping has negative ids")
        self.id_to_piece = [None] * (max(vocab.values()) + 1)
        for piece, i in vocab.items():
            if self.id_to_piece[i] is not None:
                raise ValueError(f"the vocabulary mapping gives id {i} to both {self.id_to_piece[i]!r} and {piece!r}")
            self.id_to_piece[i] = piece
        self.vocab = vocab
        self.unk_id, self.eos_id = vocab["<unk>"], vocab["</s>"]
        self.pad_id = vocab.get("<pad>", self.eos_id)
        self.bos_id = vocab.get("<s>", self.pad_id)
        self._unk_piece = self.sp.id_to_piece(self.sp.unk_id())

    @classmethod
    def from_file(cls, path: str | Path, vocab: str | Path | None = None) -> "Tokenizer":
        """A sentencepiece model file, with an optional piece -> id mapping file (JSON, e.g. vocab.json)."""
        return cls(Path(path).read_bytes(), json.loads(Path(vocab).read_text(encoding="utf-8")) if vocab else None)

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
        **options,
    ) -> "Tokenizer":
        """Learn a vocabulary with sentencepiece's own trainer from text files (one sentence a line).

        Byte fallback is on, so characters outside the vocabulary become byte pieces, never <unk>.
        At most max_sentences lines (a random sample) are read, which bounds memory. `options` go to
        sentencepiece's trainer as they are (e.g. user_defined_symbols, add_dummy_prefix).
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
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            normalization_rule_name=normalization,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=1 << 16,
            num_threads=threads or os.cpu_count() or 1,
            minloglevel=2,
            **extra,
            **options,
        )
        return Tokenizer(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.vocab is None else len(self.id_to_piece)

    @functools.cached_property
    def sha256(self) -> str:
        """Identifies the vocabulary: the sentencepiece model (and the mapping, if there is one)."""
        h = hashlib.sha256(self.proto)
        if self.vocab is not None:
            h.update(b"\0vocab\0" + self.vocab_json().encode("utf-8"))
        return h.hexdigest()

    def vocab_json(self) -> str:
        """The piece -> id mapping as canonical JSON (ordered by id); "" without a mapping."""
        if self.vocab is None:
            return ""
        return json.dumps({p: i for i, p in enumerate(self.id_to_piece) if p is not None}, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.proto)

    def encode(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        """Token ids of each text; sentencepiece encodes a list with `threads` threads (None: all cores)."""
        if self.vocab is None:
            return self.sp.encode(texts, out_type=int, num_threads=threads if threads else -1)
        get, unk = self.vocab.get, self.unk_id
        return [[get(p, unk) for p in self.encode_pieces(t)] for t in texts]

    def encode_pieces(self, text: str) -> list[str]:
        if self.vocab is not None and text.startswith(">>") and (end := text.find("<<")) != -1:
            # a leading target-language code (multilingual OPUS-MT: ">>fra<< text") is one token, as in MarianTokenizer
            return [text[: end + 2], *self.sp.encode(text[end + 2 :], out_type=str)]
        return self.sp.encode(text, out_type=str)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        if self.vocab is None:
            return [self.sp.id_to_piece(int(i)) for i in ids]
        table, n = self.id_to_piece, len(self.id_to_piece)
        return [(table[int(i)] if 0 <= int(i) < n else None) or self._unk_piece for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a token sequence; special ids are dropped."""
        specials = {self.pad_id, self.bos_id, self.eos_id}
        kept = [int(i) for i in ids if int(i) not in specials]
        if self.vocab is None:
            return self.sp.decode(kept)
        # pieces the sentencepiece model lacks (the other language's, in a joint vocab.json) come back verbatim:
        # their "▁" become spaces, as MarianTokenizer does
        return self.sp.decode_pieces(self.pieces(kept)).replace("\u2581", " ").strip()

    def __getstate__(self):  # picklable for worker processes
        return {"proto": self.proto, "vocab": self.vocab}

    def __setstate__(self, state):
        self.__init__(state["proto"], state.get("vocab"))
