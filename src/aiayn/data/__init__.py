"""Data: reading and checking parallel text, sentencepiece vocabularies, binarized datasets, batches."""

from aiayn.data.batching import Batch, BatchDataset, TokenBucketSampler, collate, make_batches, make_dataloader
from aiayn.data.binarize import ParallelDataset, PrepareOptions, load_meta, load_tokenizers, prepare
from aiayn.data.corpus import CorpusError, read_parallel
from aiayn.data.tokenizer import Tokenizer

__all__ = [
    "Batch", "BatchDataset", "CorpusError", "ParallelDataset", "PrepareOptions", "Tokenizer", "TokenBucketSampler",
    "collate", "load_meta", "load_tokenizers", "make_batches", "make_dataloader", "prepare", "read_parallel",
]
