"""CLIP at an equal CPU budget: aiayn's trainer against Hugging Face `CLIPModel` trained with
`Trainer`, side by side in one run, on the same image-caption pairs and token ids.

Data, made once by `aiayn prepare --task image-text`:
* shapes: 40,000 generated 32 × 32 scenes (colour × shape × size × position; a quarter with two
  objects), three captions each from eight templates. Eight colour–shape combinations never appear
  in training; `test_unseen` holds 1,000 images of them, `test` 1,000 of the 40 seen ones.
* emoji: the 1,274 single-code-point emoji of Noto Color Emoji at 32 × 32 with their Unicode names;
  `test` holds 127 emoji never seen in training.

* aiayn: `aiayn train --config clip-tiny` (a 4-layer ViT on 4 × 4 patches and a 3-layer causal text
  Transformer, 128 wide, 4 heads, d_ff 512, joint space 128, quick-GELU; batches of 256 pairs; AdamW
  (0.9, 0.98, ε 1e-6), weight decay 0.2 on matrices, peak lr 2e-3, 200 warm-up updates and a cosine
  decay that ends with the budget; clipping at 1).
* Hugging Face: `CLIPModel` of the same dimensions (`CLIPConfig` with quick_gelu, the same context and
  special ids) fed the same token ids, trained with `Trainer` and `return_loss=True` under the same
  optimiser settings, schedule shape (cosine_with_min_lr), batch and clipping; its max_steps is set
  from its own speed (hf_budget.py). Trainer's own weight-decay grouping (biases and LayerNorms
  excluded) is what its users get.
* Both: --threads threads, the same wall-clock budget per dataset. Precision: aiayn's default (auto:
  bf16 autocast where the CPU has bf16 units, else fp32); Hugging Face in fp32 (its default) and,
  where the CPU has bf16 units, also with `bf16=True` (autocast); the speed ratio is taken against
  the faster of its runs. Scored the same way
  (aiayn.zero_shot.evaluate_split): zero-shot accuracy over all 48 colour–shape names with the
  dataset's four prompt templates averaged, on `test_unseen` (composition) and `test` (seen);
  recall@5 of held-out emoji from their names (and of names from the emoji); training pairs/s.

    .venv/bin/python benchmarks/clip_shapes.py                        # 30 + 5 minutes each
    .venv/bin/python benchmarks/clip_shapes.py --minutes 2 --emoji-minutes 1   # a quick look

Prints a table and writes benchmarks/results/clip_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from hf_budget import add_precision_options, hf_precisions, hf_system, ratio_against_fastest  # noqa: E402

from aiayn.data.image_text import ImageTextOptions, ImageTextSplit, prepare_image_text  # noqa: E402
from aiayn.data.images import to_tensor  # noqa: E402
from aiayn.data.tokenizer import Tokenizer  # noqa: E402
from aiayn.runtime import machine  # noqa: E402
from aiayn.tasks.image_text import caption_batch  # noqa: E402
from aiayn.zero_shot import evaluate_split  # noqa: E402


def run_aiayn(data: Path, work: Path, minutes: float, args) -> dict:
    from aiayn.io.checkpoint import load_model
    from aiayn.train.config import load_config
    from aiayn.train.trainer import Trainer

    run = work / f"aiayn-{data.name}"
    overrides = {
        "max_time": minutes,
        "validate_every": 0,
        "save_every": 0,
        "threads": args.threads,
        "seed": args.seed,
        "precision": args.precision,
    }
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, data, run, log=lambda *a: None, progress=False)
    summary = trainer.train()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = [e for e in log if e["type"] == "train"][-1]  # speed up to the last log line: the final validation is not training
    model, _ = load_model(run / "checkpoints" / f"step-{summary['updates']:08d}.safetensors")  # the last weights
    speed = last["tokens_seen"] / last["time"]
    return {"model": model.eval(), "updates": summary["updates"], "speed": speed, "cfg": cfg, "precision": trainer.precision}


class HFDual(torch.nn.Module):
    """A transformers CLIPModel seen through aiayn's dual-encoder interface, to be scored the same way."""

    def __init__(self, hf, config):
        super().__init__()
        self.hf, self.config = hf, config

    @staticmethod
    def _features(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def image_features(self, images):
        return F.normalize(self._features(self.hf.get_image_features(pixel_values=images)), dim=-1)

    def text_features(self, tokens):
        mask = (tokens != self.config.pad_id).long()
        return F.normalize(self._features(self.hf.get_text_features(input_ids=tokens, attention_mask=mask)), dim=-1)

    def scale(self):
        return self.hf.logit_scale.exp()


def run_hf(data: Path, work: Path, minutes: float, args, reference: dict, precision: str) -> dict:
    import transformers
    from hf_budget import budget_callback, train_for
    from transformers import CLIPConfig, CLIPModel, Trainer, TrainingArguments

    c, tc = reference["model"].config, reference["cfg"]
    split = ImageTextSplit(data, "train")
    spec = split.meta["image"]
    counts = np.diff(split.first_pair)

    class Pairs(torch.utils.data.Dataset):
        """Each image with one of its captions, drawn afresh at every visit (as aiayn draws one per epoch)."""

        def __init__(self):
            self.rng = np.random.default_rng(args.seed)

        def __len__(self):
            return len(split)

        def __getitem__(self, i):
            pair = split.first_pair[i] + int(self.rng.integers(counts[i]))
            return {"image": np.asarray(split.images[i]), "tokens": np.asarray(split.tokens[pair])}

    def collate(items):
        ids = caption_batch(np.stack([x["tokens"] for x in items]), c.pad_id)
        return {
            "pixel_values": to_tensor(np.stack([x["image"] for x in items]), spec),
            "input_ids": ids,
            "attention_mask": (ids != c.pad_id).long(),
            "return_loss": True,
        }

    def model():
        torch.manual_seed(args.seed)
        act = "quick_gelu"
        cfg = CLIPConfig(
            text_config=dict(
                vocab_size=c.vocab_size,
                hidden_size=c.text_d_model,
                intermediate_size=c.text_d_ff,
                num_hidden_layers=c.text_n_layers,
                num_attention_heads=c.text_n_heads,
                max_position_embeddings=c.context,
                hidden_act=act,
                layer_norm_eps=c.layer_norm_eps,
                bos_token_id=c.bos_id,
                eos_token_id=c.eos_id,
                pad_token_id=c.pad_id,
                projection_dim=c.d_embed,
            ),
            vision_config=dict(
                hidden_size=c.vision_d_model,
                intermediate_size=c.vision_d_ff,
                num_hidden_layers=c.vision_n_layers,
                num_attention_heads=c.vision_n_heads,
                image_size=c.image_size,
                patch_size=c.patch_size,
                num_channels=c.in_channels,
                hidden_act=act,
                layer_norm_eps=c.layer_norm_eps,
                projection_dim=c.d_embed,
            ),
            projection_dim=c.d_embed,
            logit_scale_init_value=float(np.log(1 / c.temperature)),
        )
        return CLIPModel(cfg)

    def trainer(max_steps, seconds, name):
        targs = TrainingArguments(
            output_dir=str(work / f"hf-{data.name}-{precision}-{name}"),
            max_steps=max_steps,
            per_device_train_batch_size=tc.max_sentences,
            learning_rate=tc.lr,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr": tc.min_lr},
            warmup_steps=tc.warmup_steps,
            adam_beta1=tc.adam_betas[0],
            adam_beta2=tc.adam_betas[1],
            adam_epsilon=tc.adam_eps,
            weight_decay=tc.weight_decay,
            max_grad_norm=tc.clip_norm,
            logging_steps=100,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=precision == "bf16",  # autocast, as aiayn's bf16
            seed=args.seed,
            dataloader_num_workers=0,
            dataloader_drop_last=True,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        return Trainer(model=model(), args=targs, train_dataset=Pairs(), data_collator=collate, callbacks=[budget_callback(seconds)])

    r = train_for(trainer, minutes, min_steps=tc.warmup_steps + 1)
    return {
        "model": HFDual(r["trainer"].model.eval(), c),
        "updates": r["steps"],
        "speed": r["steps"] * tc.max_sentences / r["train_seconds"],
        "planned_steps": r["planned_steps"],
        "transformers": transformers.__version__,
        "precision": precision,
    }


def score(model, data: Path, splits: list[str]) -> dict:
    tok = Tokenizer.from_file(data / "spm.model")
    out = {}
    for name in splits:
        split = ImageTextSplit(data, name)
        result = evaluate_split(model, split, split.meta["image"], tok, split.meta.get("zero_shot"), torch.device("cpu"))
        out[name] = {k.removeprefix("valid_"): round(v, 2) for k, v in result.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training budget on shapes for each library (default 30)")
    p.add_argument("--emoji-minutes", type=float, default=5.0, help="training budget on emoji for each library (default 5; 0: skip)")
    p.add_argument("--config", default="clip-tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-hf", action="store_true", help="train aiayn only")
    add_precision_options(p)
    p.add_argument("--work", help="directory for the data and runs (default: a temporary one)")
    p.add_argument("--out", default=str(HERE / "results" / "clip_shapes.json"))
    args = p.parse_args()
    args.hf_precision = hf_precisions(args)
    torch.set_num_threads(args.threads)
    rows: dict = {}
    versions = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for old in [*work.glob("aiayn-*"), *work.glob("hf-*")]:  # runs of an earlier call (the data is kept)
            shutil.rmtree(old, ignore_errors=True)
        plan = [("shapes", args.minutes, ["test", "test_unseen"])]
        if args.emoji_minutes:
            plan.append(("emoji", args.emoji_minutes, ["test", "train"]))
        for name, minutes, splits in plan:
            data = work / name
            if not data.is_dir():
                prepare_image_text(name, None, data, ImageTextOptions(seed=args.seed), log=lambda *a: None)
            runs = {"aiayn": run_aiayn(data, work, minutes, args)}
            print(f"{name}: aiayn {runs['aiayn']['updates']} updates", flush=True)
            for precision in [] if args.skip_hf else args.hf_precision:
                system = hf_system(precision)
                runs[system] = run_hf(data, work, minutes, args, runs["aiayn"], precision)
                versions["transformers"] = runs[system]["transformers"]
                print(f"{name}: {system} {runs[system]['updates']} updates", flush=True)
            for system, r in runs.items():
                rows.setdefault(name, {})[system] = {
                    "precision": r["precision"],
                    "minutes": minutes,
                    "updates": r["updates"],
                    "train_pairs_per_s": round(r["speed"], 1),
                    "parameters": sum(p.numel() for p in r["model"].parameters()),
                    **score(r["model"], data, splits),
                }
    print(
        f"\n{'':14} {'precision':>9} {'updates':>8} {'pairs/s':>8} {'unseen zs %':>12} {'seen zs %':>10} {'emoji R@5':>10} {'name R@5':>9}"
    )
    systems = sorted({s for d in rows.values() for s in d})
    for system in systems:
        shapes, emoji = rows["shapes"][system], rows.get("emoji", {}).get(system, {})
        e5 = emoji.get("test", {}).get("recall@5", float("nan"))
        n5 = emoji.get("test", {}).get("image_recall@5", float("nan"))
        print(
            f"{system:14} {shapes['precision']:>9} {shapes['updates']:>8} {shapes['train_pairs_per_s']:>8.1f} {shapes['test_unseen']['zero_shot_accuracy']:>12.2f} "
            f"{shapes['test']['zero_shot_accuracy']:>10.2f} {e5:>10.2f} {n5:>9.2f}"
        )
    result = {
        "benchmark": "clip_shapes",
        "machine": {**machine(args.threads), **versions},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "rows": rows,
    }
    peers = [s for s in systems if s.startswith("hf")]
    for system in peers:
        ratio = rows["shapes"]["aiayn"]["train_pairs_per_s"] / rows["shapes"][system]["train_pairs_per_s"]
        print(f"aiayn / {system} training pairs/s (shapes): {ratio:.2f}×")
    if peers:  # against Hugging Face's faster precision
        ratio, fastest = ratio_against_fastest(rows["shapes"], "train_pairs_per_s")
        result.update(train_pairs_per_s_ratio=round(ratio, 3), ratio_against=fastest)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
