"""Data: reading and checking parallel text, sentencepiece vocabularies, binarized datasets, batches.

Names are imported lazily, so `aiayn prepare` does not pay for importing torch.
"""

import importlib

_WHERE = {
    "Batch": "batching",
    "BatchDataset": "batching",
    "TokenBucketSampler": "batching",
    "collate": "batching",
    "make_batches": "batching",
    "make_dataloader": "batching",
    "ParallelDataset": "binarize",
    "PrepareOptions": "binarize",
    "load_meta": "binarize",
    "load_tokenizers": "binarize",
    "prepare": "binarize",
    "CorpusError": "corpus",
    "read_parallel": "corpus",
    "Tokenizer": "tokenizer",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"aiayn.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'aiayn.data' has no attribute {name!r}")
