"""`aiayn prepare --task image-text`: images with captions (CLIP's data), checked, tokenized and
written as memory-mapped arrays.

Sources:
- a pairs file (`--pairs FILE.tsv`): one `image path <TAB> caption` a line, paths relative to the
  file; an image on several lines gets several captions (training draws one per image and epoch);
- `--dataset shapes`: generated scenes of coloured shapes (colour × shape × size × position, and
  some with two objects) captioned from several templates. The colour–shape combinations of
  `HELD_OUT` never appear in training, so zero-shot accuracy on them (split `test_unseen`)
  measures composition, not memory; `valid` and `test` hold single objects of the seen ones;
- `--dataset emoji`: the emoji of Noto Color Emoji (Debian's fonts-noto-color-emoji) rendered
  with Pillow and captioned with their Unicode names; `test` holds emoji never seen in training.

A dataset directory holds meta.json (task "image-text", image shape and normalisation, vocabulary,
context, zero-shot classes and prompt templates where the source has them), the vocabulary
(spm.model: a sentencepiece BPE learned on the training captions, case-folded), and per split
{split}.images (uint8 [N, H, W, C]), {split}.tokens (int32 [P, context]: start, caption,
end-of-text, padding), {split}.pair_image (int32 [P]: the image of each caption, ascending),
{split}.captions.txt and, with zero-shot classes, {split}.labels (int16 [N], −1: none). It is
built in a temporary sibling directory and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiayn import __version__
from aiayn.data.binarize import FORMAT_VERSION, abandon_build, begin_build, check_output_dir, finish_build, load_meta
from aiayn.data.corpus import CorpusError
from aiayn.data.images import load_image

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")

# ---------------------------------------------------------------- the shapes world
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
SIZES = {"small": 0.17, "large": 0.3}  # the radius as a share of the image's side
POSITIONS = {  # centre as shares of the side
    "top left": (0.27, 0.27),
    "top": (0.5, 0.27),
    "top right": (0.73, 0.27),
    "left": (0.27, 0.5),
    "centre": (0.5, 0.5),
    "right": (0.73, 0.5),
    "bottom left": (0.27, 0.73),
    "bottom": (0.5, 0.73),
    "bottom right": (0.73, 0.73),
}
# Never in training: each colour once, each shape at least once (colour i with shape i mod 6, then shifted).
HELD_OUT = (
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "diamond"),
    ("purple", "cross"),
    ("orange", "ring"),
    ("white", "triangle"),
    ("cyan", "diamond"),
)
CAPTIONS = (
    "a {size} {colour} {shape} {where}",
    "a {colour} {shape}",
    "a {colour} {shape} {where}",
    "a photo of a {size} {colour} {shape}",
    "there is a {colour} {shape} {where}",
    "{colour} {shape}",
    "a picture of one {colour} {shape}",
    "a {size} {colour} {shape}",
)
TWO_CAPTIONS = ("a {a} and a {b}", "a {a} next to a {b}", "{a} and {b}", "a picture of a {a} and a {b}")
ZERO_SHOT_TEMPLATES = ("a {}", "a photo of a {}", "a picture of one {}", "{}")


@dataclass
class ImageTextOptions:
    image_size: int = 0  # resize every image to this square size (0: keep; a pairs file's images must then be equal); shapes/emoji: 32
    vocab_size: int = 1000  # at most (sentencepiece stops earlier when the captions have fewer pieces)
    context: int = 77  # the longest caption in tokens, start and end-of-text included (longer ones are cut)
    valid_fraction: float = 0.05
    test_fraction: float = 0.1
    skip_bad: bool = False  # skip unreadable or wrongly sized images (counted) instead of stopping
    seed: int = 1
    shapes_train: int = 40000  # images generated for training (shapes)
    shapes_eval: int = 1000  # images per evaluation split (shapes)
    two_objects: float = 0.25  # the share of training scenes with two objects (shapes)
    emoji_font: str = str(EMOJI_FONT)


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    captions: list[list[str]]  # per image, at least one
    labels: np.ndarray | None = None  # int16 [N]: a zero-shot class or −1


# ---------------------------------------------------------------- sources
def _draw(draw, shape: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, round(r / 3)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        w = r / 2.6
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    else:
        raise ValueError(shape)


def shape_scene(objects: list[tuple[str, str, str, str]], size: int, rng: np.random.Generator) -> np.ndarray:
    """One scene of objects (colour, shape, size, position) on a dark noisy background, drawn at 4×
    and downsampled (anti-aliased): uint8 [size, size, 3]."""
    from PIL import Image, ImageDraw

    big = size * 4
    background = rng.integers(0, 50, size=3)
    im = Image.new("RGB", (big, big), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(im)
    for colour, shape, scale, where in objects:
        fx, fy = POSITIONS[where]
        jitter = rng.uniform(-0.05, 0.05, size=2)
        r = SIZES[scale] * big * rng.uniform(0.9, 1.1) * (0.8 if len(objects) > 1 else 1.0)
        tint = np.clip(np.asarray(COLOURS[colour]) + rng.integers(-15, 16, size=3), 0, 255)
        _draw(draw, shape, (fx + jitter[0]) * big, (fy + jitter[1]) * big, r, tuple(int(v) for v in tint))
    array = np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.int16)
    noise = rng.integers(-8, 9, size=array.shape)
    return np.clip(array + noise, 0, 255).astype(np.uint8)


def _where(position: str) -> str:
    return "in the centre" if position == "centre" else f"at the {position}"


def _articles(caption: str) -> str:
    """'a orange' -> 'an orange'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", caption)


def shapes(opts: ImageTextOptions) -> tuple[dict[str, Split], list[str]]:
    """The shapes world's splits and its zero-shot classes ("red circle", …, every colour × shape)."""
    size = opts.image_size or 32
    classes = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    held = {f"{c} {s}" for c, s in HELD_OUT}
    seen = [c for c in classes if c not in held]
    rng = np.random.default_rng(opts.seed)
    sizes, positions = list(SIZES), list(POSITIONS)

    def one(name: str, captions_per_image: int) -> tuple[np.ndarray, list[str]]:
        colour, shape = name.split(" ")
        scale, where = sizes[rng.integers(len(sizes))], positions[rng.integers(len(positions))]
        image = shape_scene([(colour, shape, scale, where)], size, rng)
        templates = rng.choice(len(CAPTIONS), size=captions_per_image, replace=False)
        fields = {"colour": colour, "shape": shape, "size": scale, "where": _where(where)}
        return image, [_articles(CAPTIONS[t].format(**fields)) for t in templates]

    def two() -> tuple[np.ndarray, list[str]]:
        a, b = rng.choice(len(seen), size=2, replace=False)
        spots = rng.choice(len(positions), size=2, replace=False)
        objects = [(*seen[i].split(" "), sizes[rng.integers(len(sizes))], positions[p]) for i, p in zip((a, b), spots)]
        image = shape_scene(objects, size, rng)
        return image, [_articles(t.format(a=seen[a], b=seen[b])) for t in rng.choice(TWO_CAPTIONS, size=2, replace=False)]

    def split(n: int, names: list[str], two_share: float, captions_per_image: int) -> Split:
        images, captions, labels = [], [], []
        for _ in range(n):
            if two_share and rng.random() < two_share:
                image, caps = two()
                label = -1
            else:
                name = names[rng.integers(len(names))]
                image, caps = one(name, captions_per_image)
                label = classes.index(name)
            images.append(image)
            captions.append(caps)
            labels.append(label)
        return Split(np.stack(images), captions, np.asarray(labels, dtype=np.int16))

    splits = {
        "train": split(opts.shapes_train, seen, opts.two_objects, 3),
        "valid": split(opts.shapes_eval, seen, 0.0, 1),
        "test": split(opts.shapes_eval, seen, 0.0, 1),
        "test_unseen": split(opts.shapes_eval, sorted(held), 0.0, 1),
    }
    return splits, classes


def emoji_name(text: str) -> str | None:
    """The caption of an emoji: its Unicode name, lower-case (None where Unicode names none)."""
    try:
        return unicodedata.name(text).lower()
    except (ValueError, TypeError):
        return None


def emoji(opts: ImageTextOptions, log=print) -> dict[str, Split]:
    """Every single-code-point emoji that Noto Color Emoji draws, as an image and its name."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(opts.emoji_font)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: Noto Color Emoji is not installed: 'sudo apt-get install fonts-noto-color-emoji', or give --emoji-font"
        )
    try:
        font = ImageFont.truetype(str(path), 109)  # a bitmap font: its one size
    except OSError as e:
        raise CorpusError(f"{path}: not a font Pillow can read ({e})") from None
    size = opts.image_size or 32

    def render(text: str) -> np.ndarray | None:
        canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((10, 10), text, font=font, embedded_color=True)
        box = canvas.getbbox()
        if box is None:
            return None
        glyph = canvas.crop(box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
        return np.asarray(square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)

    missing = render("\U0010fffd")  # a private-use code point: what the font draws for a glyph it lacks
    ranges = [(0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1FAFF)]
    images, captions = [], []
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            name = emoji_name(chr(cp))
            if name is None:
                continue
            image = render(chr(cp))
            if image is None or (missing is not None and np.array_equal(image, missing)):
                continue
            images.append(image)
            captions.append([name])
    if not images:
        raise CorpusError(f"{path}: drew no emoji")
    log(f"rendered {len(images)} emoji from {path}")
    order = np.random.default_rng(opts.seed).permutation(len(images))
    n_test = max(1, round(len(images) * opts.test_fraction))
    n_valid = max(1, round(len(images) * opts.valid_fraction))
    parts = {"test": order[:n_test], "valid": order[n_test : n_test + n_valid], "train": order[n_test + n_valid :]}
    stacked = np.stack(images)
    return {k: Split(stacked[np.sort(v)], [captions[i] for i in np.sort(v)]) for k, v in parts.items()}


def read_pairs(path: str | Path, opts: ImageTextOptions, log=print) -> tuple[dict[str, Split], dict]:
    """A pairs file: `image <TAB> caption` a line (paths relative to the file). A bad line or image
    stops with its file and line, or with skip_bad is skipped and counted."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the pairs file ({e.strerror or e})") from None
    base = path.parent
    captions: dict[Path, list[str]] = {}
    first_line: dict[Path, int] = {}
    skipped: dict[str, int] = {}

    def bad(line: int | None, why: str, kind: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        if not opts.skip_bad:
            raise CorpusError(f"{where}: {why}; fix it, or pass --skip-bad to leave such pairs out")
        skipped[kind] = skipped.get(kind, 0) + 1

    for number, data in enumerate(raw.split(b"\n"), 1):
        if not data.strip():
            continue
        try:
            line = data.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            bad(number, f"invalid UTF-8 at byte {e.start}", "invalid_utf8")
            continue
        if "\t" not in line:
            bad(number, "no tab between the image path and the caption", "format")
            continue
        image, caption = line.split("\t", 1)
        caption = " ".join(caption.split())
        if not image.strip() or not caption:
            bad(number, "an empty image path or caption", "format")
            continue
        if any(unicodedata.category(c) == "Cc" for c in caption):
            bad(number, "a control character in the caption", "format")
            continue
        file = (base / image.strip()).resolve()
        captions.setdefault(file, []).append(caption)
        first_line.setdefault(file, number)
    if not captions:
        raise CorpusError(f"{path}: no pairs (expected 'image path<TAB>caption' lines)")
    images, kept = [], []
    shape = None
    for file, caps in captions.items():
        spec = {"channels": 3, "width": opts.image_size, "height": opts.image_size}
        try:
            if opts.image_size:
                array = load_image(file, spec)
            else:
                from PIL import Image

                with Image.open(file) as im:
                    array = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            bad(first_line[file], f"{file}: no such image", "missing")
            continue
        except (ValueError, OSError) as e:
            bad(first_line[file], f"{file}: not a readable image ({type(e).__name__})", "unreadable")
            continue
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            bad(
                first_line[file],
                f"{file} is {array.shape[1]}×{array.shape[0]} pixels, the others {shape[1]}×{shape[0]} (give --image-size to resize all)",
                "size",
            )
            continue
        images.append(array)
        kept.append(caps)
    if not images:
        raise CorpusError(f"{path}: no usable image")
    for kind, n in skipped.items():
        log(f"skipped {n} pair{'s' if n > 1 else ''} ({kind})")
    order = np.random.default_rng(opts.seed).permutation(len(images))
    n_test = round(len(images) * opts.test_fraction)
    n_valid = round(len(images) * opts.valid_fraction)
    parts = {"test": order[:n_test], "valid": order[n_test : n_test + n_valid], "train": order[n_test + n_valid :]}
    stacked = np.stack(images)
    return {k: Split(stacked[np.sort(v)], [kept[i] for i in np.sort(v)]) for k, v in parts.items() if len(v)}, skipped


# ---------------------------------------------------------------- prepare
def encode_captions(tok, captions: list[str], context: int) -> tuple[np.ndarray, int]:
    """[P, context] int32: start (where the vocabulary has one), the caption, end-of-text, padding;
    captions longer than the context are cut (counted)."""
    out = np.full((len(captions), context), tok.pad_id, dtype=np.int32)
    start = [tok.bos_id] if tok.bos_id >= 0 else []
    cut = 0
    for i, ids in enumerate(tok.encode(captions)):
        row = start + list(ids)
        if len(row) > context - 1:
            row, cut = row[: context - 1], cut + 1
        row.append(tok.eos_id)
        out[i, : len(row)] = row
    return out, cut


def prepare_image_text(
    source: str | None, pairs: str | None, out_dir: str | Path, opts: ImageTextOptions | None = None, force: bool = False, log=print
) -> dict:
    """Build an image-text dataset from `--pairs FILE` or `--dataset shapes|emoji`."""
    from aiayn.data.tokenizer import Tokenizer

    opts = opts or ImageTextOptions()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)
    started = time.time()
    zero_shot, skipped = None, {}
    if pairs:
        splits, skipped = read_pairs(pairs, opts, log)
        name = str(pairs)
    elif source == "shapes":
        splits, classes = shapes(opts)
        zero_shot = {"classes": classes, "held_out": [f"{c} {s}" for c, s in HELD_OUT], "templates": list(ZERO_SHOT_TEMPLATES)}
        name = "shapes"
    elif source == "emoji":
        splits, name = emoji(opts, log), "emoji"
    else:
        raise ValueError(f"--dataset {source!r}: image-text datasets are shapes or emoji, or give --pairs FILE.tsv")
    if "train" not in splits:
        raise CorpusError(f"{name}: too few images for a training split")
    work = begin_build(out_dir, log)
    try:
        train_text = work / "train-captions.txt"
        train_text.write_text("\n".join(c for caps in splits["train"].captions for c in caps) + "\n", encoding="utf-8")
        tok = Tokenizer.train([train_text], opts.vocab_size, "bpe", normalization="nmt_nfkc_cf", hard_vocab_limit=False)
        train_text.unlink()
        tok.save(work / "spm.model")
        lengths = [len(ids) + 1 + (tok.bos_id >= 0) for ids in tok.encode([c for caps in splits["train"].captions for c in caps])]
        context = min(opts.context, max(lengths))
        train_x = splits["train"].images.astype(np.float64) / 255.0
        mean, std = train_x.mean(axis=(0, 1, 2)).tolist(), train_x.std(axis=(0, 1, 2)).tolist()
        del train_x
        meta_splits, cut_total = {}, 0
        for split, data in splits.items():
            data.images.astype(np.uint8).tofile(work / f"{split}.images")
            flat = [c for caps in data.captions for c in caps]
            tokens, cut = encode_captions(tok, flat, context)
            cut_total += cut
            tokens.tofile(work / f"{split}.tokens")
            np.repeat(np.arange(len(data.captions), dtype=np.int32), [len(c) for c in data.captions]).tofile(work / f"{split}.pair_image")
            (work / f"{split}.captions.txt").write_text("\n".join(flat) + "\n", encoding="utf-8")
            meta_splits[split] = {"images": int(len(data.images)), "pairs": len(flat)}
            if data.labels is not None:
                data.labels.astype(np.int16).tofile(work / f"{split}.labels")
                meta_splits[split]["labelled"] = int((data.labels >= 0).sum())
        if cut_total:
            log(f"cut {cut_total} caption{'s' if cut_total > 1 else ''} to the context of {context} tokens")
        H, W, C = splits["train"].images.shape[1:]
        spec = {"height": int(H), "width": int(W), "channels": int(C), "mean": mean, "std": std, "flip": False}
        meta = {
            "format_version": FORMAT_VERSION,
            "task": "image-text",
            "aiayn_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 1),
            "source": name,
            "image": spec,
            "vocab": {"kind": "sentencepiece", "file": "spm.model", "size": tok.vocab_size, "sha256": tok.sha256},
            "context": int(context),
            "zero_shot": zero_shot,
            "splits": meta_splits,
            "skipped": skipped,
            "cut_captions": cut_total,
            "options": {k: v for k, v in vars(opts).items()},
        }
        finish_build(work, out_dir, meta)
        return meta
    except BaseException as e:
        abandon_build(work, out_dir, e)
        raise


# ---------------------------------------------------------------- reading
class ImageTextSplit:
    """One split of an image-text dataset, memory-mapped."""

    def __init__(self, directory: str | Path, split: str = "train"):
        self.directory = Path(directory)
        self.meta = meta = load_meta(directory)
        if split not in meta["splits"]:
            raise KeyError(f"{directory} has no {split!r} split (it has {', '.join(meta['splits'])})")
        spec, counts, context = meta["image"], meta["splits"][split], int(meta["context"])
        n, p = int(counts["images"]), int(counts["pairs"])
        shape = (n, spec["height"], spec["width"], spec["channels"])

        def mapped(suffix: str, dtype, shape: tuple) -> np.ndarray:
            path = self.directory / f"{split}.{suffix}"
            if not path.is_file() or path.stat().st_size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise ValueError(f"{path} does not hold {shape} {np.dtype(dtype).name}: the dataset is damaged; prepare it again")
            return np.memmap(path, dtype=dtype, mode="r", shape=shape)

        self.images = mapped("images", np.uint8, shape)
        self.tokens = mapped("tokens", np.int32, (p, context))
        self.pair_image = np.asarray(mapped("pair_image", np.int32, (p,)))
        if p and (self.pair_image.min() < 0 or self.pair_image.max() >= n or np.any(np.diff(self.pair_image) < 0)):
            raise ValueError(f"{self.directory / (split + '.pair_image')} is damaged; prepare the dataset again")
        self.first_pair = np.searchsorted(self.pair_image, np.arange(n + 1))  # image i's captions: first_pair[i] … first_pair[i+1]−1
        if n and np.any(np.diff(self.first_pair) < 1):
            raise ValueError(f"{self.directory}: an image of the {split} split has no caption; prepare the dataset again")
        self.labels = np.asarray(mapped("labels", np.int16, (n,))) if "labelled" in counts else None
        captions = self.directory / f"{split}.captions.txt"
        self._captions_path = captions

    def __len__(self) -> int:
        return len(self.images)

    @property
    def captions(self) -> list[str]:
        lines = self._captions_path.read_text(encoding="utf-8").split("\n")
        return lines[: len(self.tokens)]


def image_text_spec_id(spec: dict, vocab_sha256: str, context: int) -> str:
    """What a model's inputs mean: the image shape and normalisation, the vocabulary, the context."""
    return hashlib.sha256(json.dumps([spec, vocab_sha256, context], sort_keys=True).encode("utf-8")).hexdigest()
