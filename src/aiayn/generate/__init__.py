"""Generation: greedy, beam search and sampling over any model's next-token distributions; translation of raw text."""

from aiayn.generate.search import Hypothesis, SearchCancelled, SpecialTokens, beam_search, greedy_search, length_penalty, sample
from aiayn.generate.translate import Ensemble, SearchOptions, Translation, Translator, max_lengths, special_tokens

__all__ = [
    "Ensemble",
    "Hypothesis",
    "SearchCancelled",
    "SearchOptions",
    "SpecialTokens",
    "Translation",
    "Translator",
    "beam_search",
    "greedy_search",
    "length_penalty",
    "max_lengths",
    "sample",
    "special_tokens",
]
