"""Translation (§5, §6 of the paper): parallel text in token-bucket batches, the label-smoothed
loss on the target tokens, validation by loss, perplexity and sacreBLEU, and the sentencepiece
tokenizers that travel with the model as its assets."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from aiayn import models, runtime
from aiayn.data.batching import TokenBucketSampler, collate, make_dataloader
from aiayn.data.binarize import ParallelDataset, load_meta, load_tokenizers
from aiayn.data.tokenizer import Tokenizer
from aiayn.train.loss import projected_label_smoothed_nll


# ---------------------------------------------------------------- assets: the tokenizers
def vocabulary_id(src: Tokenizer, tgt: Tokenizer) -> str:
    """One string that identifies a (source, target) vocabulary: the source's sha256, and the target's after ':' when it differs."""
    return src.sha256 if tgt is src or tgt.sha256 == src.sha256 else f"{src.sha256}:{tgt.sha256}"


def tokenizer_assets(src: Tokenizer, tgt: Tokenizer) -> dict[str, str]:
    """The tokenizers as checkpoint assets (base64 sentencepiece models, piece -> id mappings as JSON)."""
    same = tgt is src or tgt.sha256 == src.sha256
    if (src.vocab is None) != (tgt.vocab is None):
        raise ValueError("the source and target tokenizers must both carry a vocabulary mapping, or neither")
    assets = {"spm_src": base64.b64encode(src.proto).decode("ascii")}
    if not same:
        assets["spm_tgt"] = base64.b64encode(tgt.proto).decode("ascii")
    if src.vocab is not None:  # piece -> id mappings (imported Marian models): only when present
        assets["vocab_src"] = src.vocab_json()
        if not same and tgt.vocab_json() != assets["vocab_src"]:
            assets["vocab_tgt"] = tgt.vocab_json()
    return assets


def tokenizers_from_assets(assets: dict[str, str], source: str = "checkpoint") -> tuple[Tokenizer, Tokenizer]:
    from aiayn.io.checkpoint import CheckpointError

    try:
        vocab_src = json.loads(assets["vocab_src"]) if assets.get("vocab_src") else None
        vocab_tgt = json.loads(assets["vocab_tgt"]) if assets.get("vocab_tgt") else vocab_src
        src = Tokenizer(base64.b64decode(assets["spm_src"]), vocab_src)
        tgt = Tokenizer(base64.b64decode(assets["spm_tgt"]), vocab_tgt) if assets.get("spm_tgt") else src
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{source}: damaged tokenizer assets ({e})") from None
    return src, tgt


# ---------------------------------------------------------------- the loss
class LossModel(nn.Module):
    """The encoder-decoder with its training loss attached, so DDP sees one forward."""

    def __init__(self, model: nn.Module, label_smoothing: float):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        hidden, _ = self.model.decode(tgt_in, self.model.encode(src))  # [B, T, d_model]
        real = tgt_out.ne(self.model.config.pad_id)
        # the output projection only where there are targets, [N, d_model] -> [N, V], with the loss
        return projected_label_smoothed_nll(hidden[real], *self.model.output_projection(), tgt_out[real], self.label_smoothing)


# ---------------------------------------------------------------- the task
class TranslationTask:
    """A dataset from 'aiayn prepare' (parallel text) and what training needs of it."""

    name = "translation"
    metric_name = "valid_bleu"  # the best checkpoint has the highest (else the lowest valid loss)
    fine_tune_keys = ("dropout", "attn_dropout", "activation_dropout")  # what --init-from may change in the model's config

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir)
        self.tokenizers = load_tokenizers(self.data_dir)
        self.vocab_id = vocabulary_id(*self.tokenizers)
        self.train_data = ParallelDataset(self.data_dir, "train")
        self.valid_data = ParallelDataset(self.data_dir, "valid") if "valid" in self.meta["splits"] else None

    def describe(self) -> str:
        return f"{len(self.train_data)} pairs"

    # ----- the model
    def model_config(self, values: dict):
        """(architecture, config) for the `model` section of a training config, sized to this vocabulary."""
        values = dict(values)
        preset = values.pop("preset", "base")
        ids = self.meta["special_ids"]
        return models.preset_config(
            preset,
            src_vocab_size=self.meta["vocab"]["src"]["size"],
            tgt_vocab_size=self.meta["vocab"]["tgt"]["size"],
            share_embeddings=self.meta["joint_vocab"],
            pad_id=ids["pad"],
            unk_id=ids["unk"],
            bos_id=ids["bos"],
            eos_id=ids["eos"],
            **values,
        )

    def check_compatible(self, ckpt, what: str) -> None:
        """Refuse a checkpoint (--init-from) whose vocabulary is not this dataset's."""
        from aiayn.io.checkpoint import CheckpointError

        if ckpt.task != self.name or vocabulary_id(*ckpt.tokenizers) != self.vocab_id:
            raise CheckpointError(
                f"{what} {ckpt.path}: its vocabulary differs from the dataset's ({self.data_dir}); "
                f"prepare the data with that model's vocabulary ('aiayn prepare --vocab-from {ckpt.path} ...'), or train from scratch"
            )

    def assets(self) -> dict[str, str]:
        return tokenizer_assets(*self.tokenizers)

    # ----- batches
    def sampler(self, model: nn.Module, cfg, rank: int = 0, world_size: int = 1) -> TokenBucketSampler:
        """Token buckets of ≤ cfg.max_tokens per side (§5.1)."""
        return TokenBucketSampler(
            self.train_data.src_lengths,
            self.train_data.tgt_lengths,
            cfg.max_tokens,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
            max_sentences=cfg.max_sentences,
        )

    def batches(self, sampler: TokenBucketSampler, model: nn.Module, num_workers: int = 0, pin_memory: bool = False):
        """One epoch's batches from where `sampler` stands (its epoch and position)."""
        ids = self.meta["special_ids"]
        pad, start, eos = ids["pad"], model.config.decoder_start_id, ids["eos"]
        if num_workers:
            return make_dataloader(self.train_data, sampler, pad, start, eos, num_workers, pin_memory)
        return (collate([self.train_data[i] for i in idx], idx, pad, start, eos) for idx in sampler)

    def loss_model(self, model: nn.Module, label_smoothing: float) -> nn.Module:
        return LossModel(model, label_smoothing)

    # ----- validation
    @torch.no_grad()
    def validate(self, model: nn.Module, cfg, where: torch.device, precision: str) -> dict:
        """Loss and perplexity on the valid set (teacher forcing), then BLEU/chrF of its translation."""
        from aiayn.evaluate import score
        from aiayn.generate.translate import Translator

        model.eval()
        data = self.valid_data
        ids = self.meta["special_ids"]
        longest = int(max(data.src_lengths.max(), data.tgt_lengths.max())) + 1
        sampler = TokenBucketSampler(data.src_lengths, data.tgt_lengths, max(cfg.max_tokens, longest), shuffle=False)
        loss_model = LossModel(model, cfg.label_smoothing)
        loss = nll = tokens = 0.0
        for idx in sampler:
            b = collate([data[i] for i in idx], idx, ids["pad"], model.config.decoder_start_id, ids["eos"]).to(where)
            with runtime.autocast(precision, where):
                total, total_nll = loss_model(*b.inputs)
            loss, nll, tokens = loss + total.item(), nll + total_nll.item(), tokens + b.loss_tokens
        result = {"valid_loss": loss / tokens / math.log(2), "valid_nll": nll / tokens / math.log(2)}
        result["valid_ppl"] = 2 ** result["valid_nll"]
        src_text, ref_text = data.text("src"), data.text("tgt")
        if cfg.valid_bleu and src_text and ref_text:
            n = cfg.valid_max_sentences or len(src_text)
            translator = Translator(
                model, *self.tokenizers, beam=cfg.valid_beam, device=where, precision=precision, cudnn_attention=cfg.cudnn_attention
            )
            hyps = [t.text for t in translator.translate(src_text[:n])]
            bleu, chrf = score(hyps, ref_text[:n])
            result.update(valid_bleu=bleu.score, valid_chrf=chrf.score)
        return result
