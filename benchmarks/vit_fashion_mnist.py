"""ViT on Fashion-MNIST at an equal CPU budget: aiayn's trainer against Hugging Face
`ViTForImageClassification` trained with `Trainer`, side by side in one run, on the same images.

Data: Debian's dataset-fashion-mnist, prepared once with `aiayn prepare --task images --dataset
fashion-mnist` (55,000 train / 5,000 valid held out of the 60,000, the 10,000 test images).

* aiayn: `aiayn train --config vit-tiny` (patch 4 → 7 × 7 patches + a class token, the patches
  embedded by a convolutional stem (two 3 × 3 convolutions of stride 2), 6 layers, 128 wide,
  4 heads, d_ff 512, stochastic depth 0.1; batches of 128; AdamW, weight decay 0.05, peak lr
  2e-3, 300 warm-up updates and a cosine decay that ends with the budget; label smoothing 0.1;
  a random crop of the 2-pixel-padded image and a horizontal flip).
* Hugging Face: `ViTForImageClassification` of the same dimensions, `Trainer` with the same
  optimiser settings, schedule shape (cosine_with_min_lr), label smoothing, batch and the same
  augmentation (one numpy function for both); its max_steps is set from its speed (hf_budget.py).
  ViT in transformers has no stochastic depth and no convolutional stem (its patches are embedded
  by one strided convolution): those differences are the libraries'. `--set model.patch_stem=linear`
  gives aiayn the same patch embedding.
* Both: --threads threads, the same wall-clock budget. Precision: aiayn's default (auto: bf16
  autocast where the CPU has bf16 units, else fp32); Hugging Face in fp32 and, where the CPU has
  bf16 units, also with `bf16=True`; the speed ratio is taken against the faster of its runs. Reported: valid and test accuracy, training
  images/s, inference images/s (batch 256, no gradients, in the training precision). --set KEY=VALUE
  changes a key of aiayn's config: a trial of the recipe, judged on the valid split (never on test).

    .venv/bin/python benchmarks/vit_fashion_mnist.py                 # 30 minutes each
    .venv/bin/python benchmarks/vit_fashion_mnist.py --minutes 2     # a quick look

Prints a table and writes benchmarks/results/vit_fashion_mnist.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from common import add_set_option, read_set  # noqa: E402
from hf_budget import add_precision_options, hf_precisions, hf_system, ratio_against_fastest  # noqa: E402

from aiayn.data.images import ImageSplit, prepare_images, to_tensor  # noqa: E402
from aiayn.runtime import autocast, machine  # noqa: E402
from aiayn.tasks.images import augment, crop_padding  # noqa: E402


@torch.no_grad()
def accuracy_and_speed(logits_of, split: ImageSplit, spec: dict, batch: int = 256) -> tuple[float, float]:
    correct, started = 0, time.time()
    for start in range(0, len(split), batch):
        x = to_tensor(np.asarray(split.images[start : start + batch]), spec)
        y = torch.from_numpy(split.labels[start : start + batch].astype(np.int64))
        correct += int((logits_of(x).argmax(-1) == y).sum())
    return 100.0 * correct / len(split), len(split) / (time.time() - started)


def run_aiayn(data: Path, work: Path, args) -> dict:
    from aiayn.io.checkpoint import load_model
    from aiayn.train.config import load_config, merge
    from aiayn.train.trainer import Trainer

    overrides = {"max_time": args.minutes, "validate_every": 0, "save_every": 0, "threads": args.threads, "precision": args.precision}
    overrides = merge(overrides, args.set)
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, data, work / "aiayn-run", log=lambda *a: None, progress=False)
    summary = trainer.train()
    log = [json.loads(line) for line in (work / "aiayn-run" / "log.jsonl").read_text().splitlines()]
    last = [e for e in log if e["type"] == "train"][-1]  # speed up to the last log line: the final validation is not training
    model, _ = load_model(work / "aiayn-run" / "checkpoints" / f"step-{summary['updates']:08d}.safetensors")  # the last weights
    return {
        "model": model,
        "updates": summary["updates"],
        "images": summary["tokens_seen"],
        "speed": last["tokens_seen"] / last["time"],
        "train_seconds": last["time"],
        "cfg": cfg,
        "precision": trainer.precision,
    }


def run_hf(data: Path, work: Path, args, reference: dict, precision: str) -> dict:
    import transformers
    from hf_budget import budget_callback, train_for
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

    c, tc = reference["model"].config, reference["cfg"]
    split = ImageSplit(data, "train")
    spec = split.meta["image"]
    pad = crop_padding(spec, tc.crop_padding)

    class Augmented(torch.utils.data.Dataset):
        def __init__(self):
            self.rng = np.random.default_rng(args.seed)

        def __len__(self):
            return len(split)

        def __getitem__(self, i):
            image = augment(np.asarray(split.images[i : i + 1]), self.rng, pad, spec["flip"])
            return {"pixel_values": to_tensor(image, spec)[0], "labels": int(split.labels[i])}

    def model():
        torch.manual_seed(args.seed)
        hf_cfg = ViTConfig(
            hidden_size=c.d_model,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            intermediate_size=c.d_ff,
            hidden_act="gelu",
            hidden_dropout_prob=c.dropout,
            attention_probs_dropout_prob=c.attn_dropout,
            image_size=c.image_size,
            patch_size=c.patch_size,
            num_channels=c.in_channels,
            num_labels=c.n_classes,
        )
        return ViTForImageClassification(hf_cfg)

    def trainer(max_steps, seconds, name):
        targs = TrainingArguments(
            output_dir=str(work / f"hf-{precision}-{name}"),
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
            label_smoothing_factor=tc.label_smoothing,
            logging_steps=100,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=precision == "bf16",  # autocast, as aiayn's bf16
            seed=args.seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        return Trainer(model=model(), args=targs, train_dataset=Augmented(), callbacks=[budget_callback(seconds)])

    r = train_for(trainer, args.minutes, min_steps=tc.warmup_steps + 1)
    return {
        "model": r["trainer"].model.eval(),
        "updates": r["steps"],
        "images": r["steps"] * tc.max_sentences,
        "train_seconds": r["train_seconds"],
        "planned_steps": r["planned_steps"],
        "transformers": transformers.__version__,
        "precision": precision,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training budget for each library (default 30)")
    p.add_argument("--config", default="vit-tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-hf", action="store_true", help="train aiayn only")
    add_precision_options(p)
    add_set_option(p, "the valid accuracy")
    p.add_argument("--work", help="directory for the data and runs (default: a temporary one)")
    p.add_argument("--out", default=str(HERE / "results" / "vit_fashion_mnist.json"))
    args = p.parse_args()
    args.hf_precision = hf_precisions(args)
    args.set = read_set(p, args)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for old in [work / "aiayn-run", *work.glob("hf-*")]:  # runs of an earlier call (the data is kept)
            shutil.rmtree(old, ignore_errors=True)
        data = work / "data"
        if not data.is_dir():
            prepare_images("fashion-mnist", data)
        test, valid = ImageSplit(data, "test"), ImageSplit(data, "valid")
        spec = test.meta["image"]
        runs = {"aiayn": run_aiayn(data, work, args)}
        print(f"aiayn: {runs['aiayn']['updates']} updates", flush=True)
        for precision in [] if args.skip_hf else args.hf_precision:
            system = hf_system(precision)
            runs[system] = run_hf(data, work, args, runs["aiayn"], precision)
            print(f"{system}: {runs[system]['updates']} updates", flush=True)
        rows = {}
        for name, r in runs.items():
            model = r["model"]
            # each model in its training precision: Trainer leaves Hugging Face's forward wrapped in autocast (accelerate)
            if name == "aiayn":

                def logits_of(x, m=model, precision=r["precision"]):
                    with autocast(precision, x.device):
                        return m(x).float()

            else:
                logits_of = lambda x, m=model: m(pixel_values=x).logits  # noqa: E731
            accuracy, speed = accuracy_and_speed(logits_of, test, spec)
            valid_accuracy, _ = accuracy_and_speed(logits_of, valid, spec)
            rows[name] = {
                "precision": r["precision"],
                "updates": r["updates"],
                "train_images": r["images"],
                "train_seconds": round(r["train_seconds"], 1),
                "train_images_per_s": round(r.get("speed", r["images"] / r["train_seconds"]), 1),
                "valid_accuracy": round(valid_accuracy, 2),
                "test_accuracy": round(accuracy, 2),
                "inference_images_per_s": round(speed, 1),
                "parameters": sum(p.numel() for p in model.parameters()),
            }
    print(f"\n{'':8} {'precision':>9} {'updates':>8} {'train img/s':>12} {'valid acc %':>12} {'test acc %':>11} {'infer img/s':>12}")
    for name, r in rows.items():
        print(
            f"{name:8} {r['precision']:>9} {r['updates']:>8} {r['train_images_per_s']:>12.1f} {r['valid_accuracy']:>12.2f}"
            f" {r['test_accuracy']:>11.2f} {r['inference_images_per_s']:>12.1f}"
        )
    result = {
        "benchmark": "vit_fashion_mnist",
        "machine": machine(args.threads),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "rows": rows,
    }
    peers = [name for name in rows if name != "aiayn"]
    for name in peers:
        result["machine"]["transformers"] = runs[name]["transformers"]
        print(f"aiayn / {name} training images/s: {rows['aiayn']['train_images_per_s'] / rows[name]['train_images_per_s']:.2f}×")
    if peers:  # against Hugging Face's faster precision
        ratio, fastest = ratio_against_fastest(rows, "train_images_per_s")
        result.update(train_images_per_s_ratio=round(ratio, 3), ratio_against=fastest)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
