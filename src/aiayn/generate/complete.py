"""Text generation with a language model (GPT): prompts in, continuations out, decoded by the
searches of generate.search with a KV cache and a multi-token prefill of the prompts.

A batch of prompts of unequal length is left-padded and masked (models.gpt), so each continues
exactly as it would alone. Stop strings end a row as soon as its text holds one (the text is cut
before it), and `on_text` streams each row's new text as it comes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from aiayn import runtime
from aiayn.generate.search import SpecialTokens, beam_search, greedy_search, repetition_penalty, sample
from aiayn.nn.int8 import for_precision


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 100
    min_new_tokens: int = 0  # no EOS before this many
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    beam: int = 1  # > 1: beam search (temperature and the cuts do not apply)
    stop: tuple[str, ...] = ()  # strings that end a continuation (left out of it)
    seed: int | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be ≥ 1")
        if self.temperature < 0:
            raise ValueError("temperature must be ≥ 0 (0: greedy)")
        if self.top_k < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p < 1 or self.repetition_penalty <= 0 or self.beam < 1:
            raise ValueError("top_k ≥ 0, 0 < top_p ≤ 1, 0 ≤ min_p < 1, repetition_penalty > 0 and beam ≥ 1")
        if any(not s for s in self.stop):
            raise ValueError("a stop string may not be empty")

    def with_overrides(self, **values) -> "GenerationOptions":
        return replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass
class Completion:
    prompt: str
    text: str  # the continuation (without the prompt)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # stop (EOS or a stop string) | length
    logprob: float = 0.0


def _ready(text: str, stops: tuple[str, ...]) -> int:
    """How much of a growing text can be shown: not a half-decoded character at its end, nor an
    end that may be the start of a stop string."""
    ready = len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, ready), 0, -1):
            if text[:ready].endswith(s[:k]):
                ready -= k
                break
    return ready


class Generator:
    """A language model and its tokenizer, ready to continue prompts."""

    def __init__(self, model, tokenizer, *, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.device = runtime.device(device) if isinstance(device, str) else device
        self.model, self.precision = for_precision(model.to(self.device).eval(), precision, self.device)
        self.tokenizer = tokenizer
        cfg = model.config
        self.special = SpecialTokens(pad=cfg.pad_id, eos=cfg.eos_id, start=cfg.eos_id)

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode([prompt])[0] if prompt else []
        start = self.model.config.bos_id
        if start >= 0:
            ids = [start, *ids]
        return ids or [self.model.config.eos_id]  # an empty prompt starts a document

    def generate(
        self,
        prompts: list[str],
        options: GenerationOptions = GenerationOptions(),
        on_text: Callable[[int, str], None] | None = None,
        stop=None,
    ) -> list[Completion]:
        """Continue every prompt; on_text(i, new_text) is called as prompt i's text grows."""
        options.check()
        cfg = self.model.config
        encoded = [self.encode(p) for p in prompts]
        room = cfg.context if cfg.positional == "learned" else None
        caps = []
        for i, ids in enumerate(encoded):
            cap = options.max_new_tokens
            if room is not None:
                if len(ids) >= room:
                    ids = encoded[i] = ids[-(room - 1) :]  # keep the end of a prompt that fills the context
                cap = min(cap, room - len(ids))
            caps.append(cap)
        P = max(len(ids) for ids in encoded)
        tokens = torch.full((len(prompts), P), cfg.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), P, dtype=torch.bool)
        for i, ids in enumerate(encoded):
            tokens[i, P - len(ids) :] = torch.tensor(ids)
            mask[i, P - len(ids) :] = True
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        texts = [""] * len(prompts)
        shown = [0] * len(prompts)
        generated: list[list[int]] = [[] for _ in prompts]
        stopped = [False] * len(prompts)

        def on_step(active: torch.Tensor, picked: torch.Tensor):
            if not options.stop and on_text is None:
                return None
            done = torch.zeros_like(picked, dtype=torch.bool)
            for n, (row, tok) in enumerate(zip(active.tolist(), picked.tolist())):
                if tok in (cfg.eos_id, cfg.pad_id) or stopped[row]:  # (pad: a row done, still in the batch on a GPU)
                    continue
                generated[row].append(tok)
                text = self.tokenizer.decode(generated[row])
                cut = min((text.find(s) for s in options.stop if s in text), default=-1)
                if cut >= 0:
                    text, stopped[row] = text[:cut], True
                    done[n] = True
                texts[row] = text
                if on_text is not None:
                    ready = len(text) if stopped[row] else _ready(text, options.stop)
                    if ready > shown[row]:
                        on_text(row, text[shown[row] : ready])
                        shown[row] = ready
            return done

        penalty = options.repetition_penalty

        def adjust(logits, active, out):
            seen = torch.cat([tokens[active].masked_fill(~mask[active], -1), out[active]], 1)
            return repetition_penalty(logits, seen, penalty)

        generator = None
        if options.seed is not None:
            generator = torch.Generator(self.device).manual_seed(options.seed)
        common = dict(
            special=self.special,
            max_len=torch.tensor(caps, device=self.device),
            prompt=tokens,
            stop=stop,
            min_len=options.min_new_tokens,
            eos_at_cap=False,
            adjust=adjust if penalty != 1.0 else None,
            on_step=on_step,
        )
        with runtime.autocast(self.precision, self.device):
            if options.beam > 1:
                hyps = [
                    h[0]
                    for h in beam_search(
                        self.model,
                        mask,
                        special=self.special,
                        max_len=torch.tensor(caps, device=self.device) + 1,
                        beam=options.beam,
                        alpha=0.0,
                        min_len=options.min_new_tokens,
                        prompt=tokens,
                        stop=stop,
                    )
                ]
            elif options.temperature == 0:
                hyps = greedy_search(self.model, mask, **common)
            else:
                hyps = sample(
                    self.model,
                    mask,
                    temperature=options.temperature,
                    top_k=options.top_k,
                    top_p=options.top_p,
                    min_p=options.min_p,
                    generator=generator,
                    **common,
                )
        results = []
        for i, h in enumerate(hyps):
            ids = [t for t in h.tokens if t != cfg.eos_id]
            text = texts[i] if (stopped[i] or on_text is not None or options.stop) and options.beam == 1 else self.tokenizer.decode(ids)
            if options.beam > 1 and options.stop:
                cut = min((text.find(s) for s in options.stop if s in text), default=-1)
                text, stopped[i] = (text[:cut], True) if cut >= 0 else (text, False)
            ended = stopped[i] or len(h.tokens) < caps[i] or (h.tokens and h.tokens[-1] == cfg.eos_id)
            results.append(Completion(prompts[i], text, ids, "stop" if ended else "length", h.logprob))
            if on_text is not None and len(text) > shown[i]:
                on_text(i, text[shown[i] :])
        return results
