"""A diffusion transformer on Fashion-MNIST at an equal CPU budget: aiayn's DiT against diffusers'
`DiTTransformer2DModel` (adaLN-Zero) trained as diffusers' training examples do, side by side in
one run, on the same images, schedule and dimensions; then 1,000 samples of each (100 per class)
with 50 DDIM steps at guidance 1, 1.5, 2 and 4, scored by an independently trained classifier
(--draws N: N sets of 1,000 samples, from N seeds, and the means of their scores).

Data: Debian's dataset-fashion-mnist through `aiayn prepare --task images` (54,000 train, 6,000
valid, 10,000 test), pixels scaled to [−1, 1], not mirrored (the recipe's `random_flip: false`, as
Fashion-MNIST's shoes all face left; `--set random_flip=true` mirrors half the images, in both loops).

* aiayn: `aiayn train --config dit-tiny` (28 × 28 in 4 × 4 patches, 6 layers of 128, 4 heads,
  d_ff 512; DDPM's linear schedule over 1,000 steps, ε-prediction, training steps drawn with
  ln σ_t ~ N(0, 1) (diffusers' loop draws them uniformly, as its examples do); labels dropped 10%
  of the time; batches of 16, AdamW 0.9/0.999, peak lr 1e-3 after 200 warm-up updates, cosine
  decay with the budget, clipping at 1, an EMA of decay 0.999 that sampling uses; GELU (erf); the model compiled
  whole by torch.compile).
* diffusers: `DiTTransformer2DModel` of the same dimensions (its blocks each embed t and the
  class themselves, so it has more parameters), `DDPMScheduler.add_noise` with the same schedule,
  `F.mse_loss`, the same optimiser, `get_cosine_schedule_with_warmup` set from its measured speed to
  end with the budget, `EMAModel` (decay 0.999, its warm-up) — the loop of diffusers' training
  examples; sampling with `DDIMScheduler` (clip_sample on, as aiayn clips x̂₀) and classifier-free
  guidance as `DiTPipeline` does it (with --guidance-interval, both models are guided only at the
  steps in that interval of noise levels).
* The judge: aiayn's `vit-tiny` trained on the same training images for --classifier-minutes
  (or given with --classifier): its accuracy on the samples against the class asked for, and the
  Fréchet distance between the samples and the 10,000 test images in its pooled features (the
  penultimate layer), beside two distances of real images to the test images: 10,000 training
  images, and as many training images as samples, per class as many (the estimate's bias grows as
  the number of images falls, so the samples' distance compares with the second).

    .venv/bin/python benchmarks/dit_fashion_mnist.py                      # 30 minutes each
    .venv/bin/python benchmarks/dit_fashion_mnist.py --minutes 2 --samples-per-class 10   # a quick look
    .venv/bin/python benchmarks/dit_fashion_mnist.py --skip-peer --aiayn-run RUN --classifier JUDGE \
        --guidance-interval 0.28 5.42           # an earlier run's samples judged again, guided in an interval

Prints a table and writes benchmarks/results/dit_fashion_mnist.json and (--grid) a sample grid.
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
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from common import add_set_option, read_set  # noqa: E402

from aiayn import schema  # noqa: E402
from aiayn.data.images import ImageSplit, prepare_images, to_tensor  # noqa: E402
from aiayn.diffusion import NoiseSchedule, guided_steps  # noqa: E402
from aiayn.runtime import machine  # noqa: E402
from aiayn.tasks.image_generation import to_pixels, to_unit_range  # noqa: E402
from aiayn.tasks.images import flips  # noqa: E402
from aiayn.vision import frechet_distance  # noqa: E402


def last_train_speed(run: Path) -> tuple[float, float]:
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = [e for e in log if e["type"] == "train"][-1]  # up to the last log line: the final validation is not training
    return last["tokens_seen"] / last["time"], last["time"]


def train_classifier(data: Path, work: Path, args):
    from aiayn.io.checkpoint import load_model
    from aiayn.train.config import load_config
    from aiayn.train.trainer import Trainer

    if args.classifier:
        return load_model(args.classifier)[0].eval()
    run = work / "judge"
    overrides = {"max_time": args.classifier_minutes, "validate_every": 0, "save_every": 0, "threads": args.threads, "precision": "fp32"}
    cfg = load_config("vit-tiny", overrides)
    summary = Trainer(cfg, data, run, log=lambda *a: None, progress=False).train()
    return load_model(run / "checkpoints" / f"step-{summary['updates']:08d}.safetensors")[0].eval()


def run_aiayn(data: Path, work: Path, args) -> dict:
    import yaml

    from aiayn.generate.images import ImageGenerator
    from aiayn.io.checkpoint import list_checkpoints
    from aiayn.train.config import TrainConfig, load_config, merge
    from aiayn.train.trainer import Trainer

    if args.aiayn_run:  # an earlier run, judged again (e.g. with another sampler setting)
        run = Path(args.aiayn_run)
        updates, last = list_checkpoints(run)[-1]
        cfg = TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())["train"])
        speed, seconds = last_train_speed(run)
        return aiayn_row(ImageGenerator.load(last), cfg, updates, speed, seconds, args)
    run = work / "aiayn-run"
    cfg = load_config(
        args.config,
        merge(
            # the same precision as diffusers' loop below
            {
                "max_time": args.minutes,
                "validate_every": 0,
                "save_every": 0,
                "threads": args.threads,
                "seed": args.seed,
                "precision": args.precision,
            },
            args.set,
        ),
    )
    summary = Trainer(cfg, data, run, log=lambda *a: None, progress=False).train()
    speed, seconds = last_train_speed(run)
    gen = ImageGenerator.load(run / "checkpoints" / f"step-{summary['updates']:08d}.safetensors")
    return aiayn_row(gen, cfg, summary["updates"], speed, seconds, args)


def aiayn_row(gen, cfg, updates: int, speed: float, seconds: float, args) -> dict:
    def sample(classes, guidance, seed):
        return gen.sample(classes, args.steps, guidance, 0.0, seed, "ddim", batch=args.sample_batch, guidance_interval=args.interval)[0]

    return {"model": gen.model, "cfg": cfg, "updates": updates, "speed": speed, "train_seconds": seconds, "sample": sample}


def run_diffusers(data: Path, args, reference: dict) -> dict:
    import diffusers
    from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    c, tc = reference["model"].config, reference["cfg"]
    split = ImageSplit(data, "train")
    flip = flips(split.meta["image"], tc.random_flip)  # as aiayn's recipe
    torch.manual_seed(args.seed)

    def make():
        return DiTTransformer2DModel(
            num_attention_heads=c.n_heads,
            attention_head_dim=c.d_model // c.n_heads,
            in_channels=c.in_channels,
            out_channels=c.in_channels,
            num_layers=c.n_layers,
            sample_size=c.image_size,
            patch_size=c.patch_size,
            num_embeds_ada_norm=c.n_classes,  # with class_dropout_prob 0.1 inside: the null class is n_classes
            norm_type="ada_norm_zero",
            activation_fn="gelu-approximate",
        )

    model = make()
    noise_scheduler = DDPMScheduler(num_train_timesteps=c.diffusion_steps, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps, weight_decay=tc.weight_decay)
    rng = np.random.default_rng(args.seed)
    batch = tc.max_sentences

    def batches():
        while True:
            order = rng.permutation(len(split))
            for i in range(len(split) // batch):
                idx = np.sort(order[i * batch : (i + 1) * batch])
                x = to_unit_range(np.asarray(split.images[idx]))
                if flip:
                    mirror = torch.from_numpy(rng.random(len(idx)) < 0.5)
                    x[mirror] = x[mirror].flip(-1)
                yield x, torch.from_numpy(split.labels[idx].astype(np.int64))

    stream = batches()

    def step(ema, lr_scheduler):
        x, y = next(stream)
        noise = torch.randn_like(x)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x.size(0),))
        noisy = noise_scheduler.add_noise(x, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):  # accelerate's mixed_precision="bf16"
            pred = model(noisy, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
        optimizer.step()
        if lr_scheduler:
            lr_scheduler.step()
        optimizer.zero_grad()
        if ema:
            ema.step(model.parameters())
        return loss.item()

    model.train()
    probe_start = None
    for i in range(30):  # its speed, to set the schedule's length to the budget (the probe's updates are undone below)
        if i == 10:
            probe_start = time.time()
        step(None, None)
    per_step = (time.time() - probe_start) / 20
    planned = max(tc.warmup_steps + 1, int(args.minutes * 60 / per_step))
    torch.manual_seed(args.seed)
    model = make().train()  # a fresh model: the budget starts here
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps, weight_decay=tc.weight_decay)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, tc.warmup_steps, planned)
    ema = EMAModel(model.parameters(), decay=tc.ema_decay)
    started, updates, losses = time.time(), 0, []
    while time.time() - started < args.minutes * 60 and updates < planned:
        losses.append(step(ema, lr_scheduler))
        updates += 1
    seconds = time.time() - started
    ema.copy_to(model.parameters())
    model.eval()
    ddim = DDIMScheduler.from_config(noise_scheduler.config)
    # --guidance-interval: which of its schedule's steps to guide, as aiayn's sampler picks them
    guide_at = guided_steps(NoiseSchedule(noise_scheduler.betas.double()), args.interval) if args.interval else None

    @torch.no_grad()
    def sample(classes, guidance, seed):
        generator = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, len(classes), args.sample_batch):
            y = torch.tensor(classes[start : start + args.sample_batch])
            x = torch.randn((len(y), c.in_channels, c.image_size, c.image_size), generator=generator)
            ddim.set_timesteps(args.steps)
            for t in ddim.timesteps:
                if guidance == 1.0 or (guide_at is not None and not guide_at[int(t)]):
                    eps = model(x, timestep=t.expand(len(y)), class_labels=y).sample
                else:
                    both = model(
                        torch.cat([x, x]), timestep=t.expand(2 * len(y)), class_labels=torch.cat([y, torch.full_like(y, c.n_classes)])
                    ).sample
                    cond, uncond = both.chunk(2)
                    eps = uncond + guidance * (cond - uncond)
                x = ddim.step(eps, t, x).prev_sample
            out.append(to_pixels(x))
        return np.concatenate(out)

    return {
        "model": model,
        "updates": updates,
        "planned_updates": planned,
        "speed": updates * batch / seconds,
        "train_seconds": seconds,
        "final_loss": float(np.mean(losses[-50:])),
        "sample": sample,
        "diffusers": diffusers.__version__,
    }


@torch.no_grad()
def judge(classifier, images: np.ndarray, spec: dict, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes [N], pooled features [N, d]) of uint8 images [N, H, W, C]."""
    predictions, features = [], []
    for start in range(0, len(images), batch):
        x = to_tensor(images[start : start + batch], spec)
        pooled = classifier.pool(classifier.features(x)[0])
        features.append(pooled.numpy())
        predictions.append(classifier.head(pooled).argmax(-1).numpy())
    return np.concatenate(predictions), np.concatenate(features)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training budget for each library (default 30)")
    p.add_argument("--classifier-minutes", type=float, default=10.0, help="training budget of the judging ViT (default 10)")
    p.add_argument("--classifier", help="a trained Fashion-MNIST ViT to judge with (instead of training one)")
    p.add_argument("--samples-per-class", type=int, default=100)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", default="1,1.5,2,4", help="guidance scales (default 1,1.5,2,4)")
    p.add_argument(
        "--guidance-interval",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="guide both models only at the steps whose noise-to-signal ratio √((1 − ᾱ_t)/ᾱ_t) lies in (LOW, HIGH] (default: every step)",
    )
    p.add_argument("--sample-batch", type=int, default=500)
    p.add_argument("--config", default="dit-tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="training precision of both (bf16: autocast; sampling is fp32)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--draws",
        type=schema.int_at_least(1),
        default=1,
        help="sets of samples per guidance scale, seeded --seed, --seed + 1, …: the figures are their means (default 1)",
    )
    p.add_argument("--skip-peer", action="store_true", help="train aiayn only")
    p.add_argument("--aiayn-run", metavar="DIR", help="judge this earlier aiayn run (its last checkpoint) instead of training one")
    add_set_option(p, "the judge's accuracy on the samples")
    p.add_argument("--work", help="directory for the data and runs (default: a temporary one)")
    p.add_argument(
        "--grid", default=str(HERE.parent / "docs" / "dit_samples.png"), help="where to draw samples at guidance 2 ('' for none)"
    )
    p.add_argument("--out", default=str(HERE / "results" / "dit_fashion_mnist.json"))
    args = p.parse_args()
    args.set = read_set(p, args)
    args.interval = tuple(args.guidance_interval) if args.guidance_interval else None
    torch.set_num_threads(args.threads)
    scales = [float(g) for g in args.guidance.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for old in (work / "aiayn-run", work / "judge"):  # runs of an earlier call (the data is kept)
            if not (args.aiayn_run and old.resolve() == Path(args.aiayn_run).resolve()):
                shutil.rmtree(old, ignore_errors=True)
        data = work / "data"
        if not data.is_dir():
            prepare_images("fashion-mnist", data)
        train, test = ImageSplit(data, "train"), ImageSplit(data, "test")
        spec, classes = test.meta["image"], test.meta["classes"]

        started = time.time()
        classifier = train_classifier(data, work, args)
        test_pred, test_features = judge(classifier, np.asarray(test.images), spec)
        pick = np.random.default_rng(0).choice(len(train), 10_000, replace=False)
        _, train_features = judge(classifier, np.asarray(train.images[np.sort(pick)]), spec)
        # as many real images as samples, per class as many (5 draws): the samples' distance compares with these
        labels, rng, few_distances = np.asarray(train.labels), np.random.default_rng(1), []
        for _ in range(5):
            few = [rng.choice(np.flatnonzero(labels == c), args.samples_per_class, replace=False) for c in range(len(classes))]
            _, few_features = judge(classifier, np.asarray(train.images[np.sort(np.concatenate(few))]), spec)
            few_distances.append(frechet_distance(few_features, test_features))
        judge_row = {
            "minutes": round((time.time() - started) / 60, 1),
            "test_accuracy": round(100.0 * float((test_pred == test.labels).mean()), 2),
            "frechet_train_vs_test": round(frechet_distance(train_features, test_features), 3),
            "frechet_train_as_many_as_samples_vs_test": round(float(np.mean(few_distances)), 3),
            "frechet_train_as_many_as_samples_vs_test_draws": [round(d, 3) for d in few_distances],
        }
        print(
            f"judge: test accuracy {judge_row['test_accuracy']}%, Fréchet train vs test {judge_row['frechet_train_vs_test']} "
            f"(10,000 images), {judge_row['frechet_train_as_many_as_samples_vs_test']} (mean of 5 draws of "
            f"{args.samples_per_class} a class: {judge_row['frechet_train_as_many_as_samples_vs_test_draws']})",
            flush=True,
        )

        runs = {"aiayn": run_aiayn(data, work, args)}
        print(f"aiayn: {runs['aiayn']['updates']} updates, {runs['aiayn']['speed']:.1f} images/s", flush=True)
        if not args.skip_peer:
            runs["diffusers"] = run_diffusers(data, args, runs["aiayn"])
            print(f"diffusers: {runs['diffusers']['updates']} updates, {runs['diffusers']['speed']:.1f} images/s", flush=True)

        asked = [c for c in range(len(classes)) for _ in range(args.samples_per_class)]
        expected = np.array(asked)
        rows, grids = {}, {}
        for name, r in runs.items():
            row = {
                "updates": r["updates"],
                "train_seconds": round(r["train_seconds"], 1),
                "train_images_per_s": round(r["speed"], 1),
                "parameters": sum(p.numel() for p in r["model"].parameters()),
                "samples": {},
            }
            for g in scales:
                accuracies, distances, seconds = [], [], 0.0
                for draw in range(args.draws):
                    t0 = time.time()
                    images = r["sample"](asked, g, args.seed + draw)
                    seconds += time.time() - t0
                    pred, features = judge(classifier, images, spec)
                    accuracies.append(100.0 * float((pred == expected).mean()))
                    distances.append(frechet_distance(features, test_features))
                    if g == 2.0 and draw == 0:
                        grids[name] = images
                row["samples"][str(g)] = {
                    "accuracy": round(float(np.mean(accuracies)), 2),
                    "frechet": round(float(np.mean(distances)), 3),
                    "sampling_images_per_s": round(len(asked) * args.draws / seconds, 1),
                }
                if args.draws > 1:
                    row["samples"][str(g)].update(
                        accuracy_draws=[round(a, 2) for a in accuracies], frechet_draws=[round(d, 3) for d in distances]
                    )
                print(f"{name} guidance {g}: {row['samples'][str(g)]}", flush=True)
            rows[name] = row

    print(
        f"\nreal images: Fréchet distance train vs test {judge_row['frechet_train_vs_test']:.3f} (10,000 images), "
        f"{judge_row['frechet_train_as_many_as_samples_vs_test']:.3f} (as many as samples); judge test accuracy {judge_row['test_accuracy']}%"
    )
    print(f"{'':10} {'updates':>8} {'train img/s':>12} " + " ".join(f"{'acc@' + str(g):>9} {'FD@' + str(g):>8}" for g in scales))
    for name, r in rows.items():
        cells = " ".join(f"{r['samples'][str(g)]['accuracy']:>9.2f} {r['samples'][str(g)]['frechet']:>8.3f}" for g in scales)
        print(f"{name:10} {r['updates']:>8} {r['train_images_per_s']:>12.1f} {cells}")
    result = {
        "benchmark": "dit_fashion_mnist",
        "machine": machine(args.threads),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "grid", "interval")},
        "judge": judge_row,
        "rows": rows,
    }
    if "diffusers" in rows:
        result["machine"]["diffusers"] = runs["diffusers"]["diffusers"]
        result["rows"]["diffusers"]["planned_updates"] = runs["diffusers"]["planned_updates"]
        result["train_images_per_s_ratio"] = round(rows["aiayn"]["train_images_per_s"] / rows["diffusers"]["train_images_per_s"], 3)
        print(f"aiayn / diffusers training images/s: {result['train_images_per_s_ratio']:.2f}×")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.grid and grids:
        draw_grid(grids, classes, args.samples_per_class, Path(args.grid))
        print(f"wrote {args.grid}")


def draw_grid(grids: dict, classes: list[str], per_class: int, out: Path, shown: int = 10) -> None:
    """One row per class, `shown` samples of each library side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aiayn.generate.images import grid

    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.6))
    for ax, (name, images) in zip(np.atleast_1d(axes), grids.items()):
        rows = np.concatenate([images[c * per_class : c * per_class + min(shown, per_class)] for c in range(len(classes))])
        ax.imshow(np.asarray(grid(rows, min(shown, per_class)))[..., None].repeat(3, -1) if rows.shape[-1] == 1 else grid(rows, shown))
        ax.set_title(f"{name}, guidance 2", fontsize=10)
        ax.set_xticks([])
        step = rows.shape[1] + 2
        ax.set_yticks([2 + step * i + rows.shape[1] / 2 for i in range(len(classes))], classes, fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
