"""Decoding: greedy, beam search and sampling over the model's next-token distributions; translation of raw text."""

from aiayn.decode.search import Hypothesis, SearchCancelled, beam_search, greedy_search, length_penalty, sample
from aiayn.decode.translate import Ensemble, SearchOptions, Translation, Translator

__all__ = ["Ensemble", "Hypothesis", "SearchCancelled", "SearchOptions", "Translation", "Translator", "beam_search", "greedy_search", "length_penalty", "sample"]
