"""`aiayn prepare --task images`: labelled images, checked and written as memory-mapped arrays.

Sources: `fashion-mnist` (Zalando's 70,000 28 × 28 greyscale clothes, from Debian's package
dataset-fashion-mnist: IDX files under /usr/share/datasets/fashion-mnist), `digits`
(scikit-learn's bundled 1,797 8 × 8 digits), or a directory with one folder of images per class
(the ImageFolder convention, read with Pillow). A dataset directory holds meta.json (task
"images", class names, image shape, the per-channel mean and standard deviation of the training
images, counts), {split}.images (uint8, [N, H, W, C]) and {split}.labels (int16). It is built in a
temporary sibling directory and renamed into place when complete.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiayn import __version__
from aiayn.data.binarize import FORMAT_VERSION, abandon_build, begin_build, check_output_dir, finish_build, load_meta
from aiayn.data.corpus import CorpusError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ImageOptions:
    valid_fraction: float = 0.1  # of the training images held out for validation (fashion-mnist: 5,000 of 60,000)
    test_fraction: float = 0.1  # for sources without a test split of their own (digits, a folder)
    image_size: int = 0  # resize every image to this square size (0: keep; all must then be equal)
    skip_bad: bool = False  # skip unreadable or wrongly sized images (counted) instead of stopping
    flip: bool | None = None  # whether horizontal flips are a fair augmentation (None: as the source says)
    seed: int = 1
    fashion_dir: str = str(FASHION_MNIST)


# ---------------------------------------------------------------- sources
def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CorpusError(f"{path}: not a readable IDX file ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise CorpusError(f"{path}: not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise CorpusError(f"{path}: holds {body.size} values, its header says {shape}: the file is truncated")
    return body.reshape(shape)


def fashion_mnist(directory: str | Path = FASHION_MNIST) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    directory = Path(directory)
    files = {
        split: (directory / f"{p}-images-idx3-ubyte.gz", directory / f"{p}-labels-idx1-ubyte.gz")
        for split, p in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(f) for pair in files.values() for f in pair if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed ({missing[0]} is missing): install Debian's package with "
            f"'sudo apt-get install dataset-fashion-mnist', or give a folder of images per class"
        )
    out = {}
    for split, (images, labels) in files.items():
        x, y = _read_idx(images), _read_idx(labels)
        if len(x) != len(y):
            raise CorpusError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
        out[split] = (x[..., None], y.astype(np.int16))
    return out


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("--dataset digits needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 -> 0..255
    return images, d.target.astype(np.int16), [str(i) for i in range(10)]


def read_folder(directory: str | Path, opts: ImageOptions, log=print) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Every image under directory/CLASS/…, as one array. An unreadable file, or one of another size
    (without opts.image_size), stops with an error naming it, or with skip_bad is skipped and counted."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CorpusError(f"{directory}: no class folders (expected {directory}/CLASS_NAME/IMAGE files)")
    paths = [
        (p, c)
        for c, name in enumerate(classes)
        for p in sorted((directory / name).rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]
    if not paths:
        raise CorpusError(f"{directory}: the class folders hold no files")
    images, labels, skipped = [], [], {}
    shape, mode = None, None

    def bad(path: Path, why: str, kind: str) -> None:
        if not opts.skip_bad:
            raise CorpusError(f"{path}: {why}; remove or fix it, or pass --skip-bad to leave such images out")
        skipped[kind] = skipped.get(kind, 0) + 1

    for path, label in paths:
        try:
            with Image.open(path) as im:
                im.load()
                if mode is None:
                    mode = "L" if im.mode in ("L", "1", "I;16", "I", "LA") else "RGB"
                im = im.convert(mode)
                if opts.image_size:
                    im = im.resize((opts.image_size, opts.image_size), Image.Resampling.BICUBIC)
                array = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            bad(path, f"not a readable image ({type(e).__name__}: {e})", "unreadable")
            continue
        if array.ndim == 2:
            array = array[..., None]
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            bad(
                path,
                f"is {array.shape[1]}×{array.shape[0]} pixels, the others {shape[1]}×{shape[0]} (give --image-size to resize all)",
                "size",
            )
            continue
        images.append(array)
        labels.append(label)
    if not images:
        raise CorpusError(f"{directory}: no usable image")
    for kind, n in skipped.items():
        log(f"skipped {n} {'unreadable' if kind == 'unreadable' else 'wrongly sized'} file{'s' if n > 1 else ''}")
    return np.stack(images), np.asarray(labels, dtype=np.int16), classes, skipped


def _split(n: int, fractions: list[float], seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cuts, start = [], 0
    for f in fractions:
        k = int(round(n * f))
        cuts.append(np.sort(order[start : start + k]))
        start += k
    cuts.insert(0, np.sort(order[start:]))
    return cuts


# ---------------------------------------------------------------- prepare
def prepare_images(source: str, out_dir: str | Path, opts: ImageOptions | None = None, force: bool = False, log=print) -> dict:
    """Build an image dataset from `source` (fashion-mnist, digits, or a folder of class folders)."""
    opts = opts or ImageOptions()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)
    started = time.time()
    skipped: dict = {}
    if source == "fashion-mnist":
        parts = fashion_mnist(opts.fashion_dir)
        x, y = parts["train"]
        train, valid = _split(len(x), [opts.valid_fraction], opts.seed)
        splits = {"train": (x[train], y[train]), "valid": (x[valid], y[valid]), "test": parts["test"]}
        classes, flip, name = FASHION_CLASSES, True, "fashion-mnist"
    else:
        if source == "digits":
            x, y, classes = digits()
            flip, name = False, "digits"
        else:
            if not Path(source).is_dir():
                raise FileNotFoundError(f"--dataset {source}: not fashion-mnist, digits, or a directory of class folders")
            x, y, classes, skipped = read_folder(source, opts, log)
            flip, name = True, str(source)
        train, valid, test = _split(len(x), [opts.valid_fraction, opts.test_fraction], opts.seed)
        splits = {"train": (x[train], y[train]), "valid": (x[valid], y[valid]), "test": (x[test], y[test])}
    if opts.flip is not None:
        flip = opts.flip
    work = begin_build(out_dir, log)
    try:
        train_x = splits["train"][0].astype(np.float64) / 255.0
        mean = train_x.mean(axis=(0, 1, 2)).tolist()
        std = train_x.std(axis=(0, 1, 2)).tolist()
        meta_splits = {}
        for split, (images, labels) in splits.items():
            if not len(images):
                continue
            images.astype(np.uint8).tofile(work / f"{split}.images")
            labels.astype(np.int16).tofile(work / f"{split}.labels")
            meta_splits[split] = {"images": int(len(images)), "per_class": np.bincount(labels, minlength=len(classes)).tolist()}
        H, W, C = splits["train"][0].shape[1:]
        spec = {"height": int(H), "width": int(W), "channels": int(C), "mean": mean, "std": std, "flip": bool(flip)}
        meta = {
            "format_version": FORMAT_VERSION,
            "task": "images",
            "aiayn_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 1),
            "source": name,
            "classes": list(classes),
            "image": spec,
            "splits": meta_splits,
            "skipped": skipped,
            "options": {k: v for k, v in vars(opts).items()},
        }
        finish_build(work, out_dir, meta)
        return meta
    except BaseException as e:
        abandon_build(work, out_dir, e)
        raise


def image_spec_id(classes: list[str], spec: dict) -> str:
    """One string identifying what a model's inputs and outputs mean: its classes and image shape and normalisation."""
    return hashlib.sha256(json.dumps([classes, spec], sort_keys=True).encode("utf-8")).hexdigest()


class ImageSplit:
    """One split of an image dataset, memory-mapped."""

    def __init__(self, directory: str | Path, split: str = "train"):
        self.directory = Path(directory)
        self.meta = load_meta(directory)
        if split not in self.meta["splits"]:
            raise KeyError(f"{directory} has no {split!r} split (it has {', '.join(self.meta['splits'])})")
        spec, n = self.meta["image"], int(self.meta["splits"][split]["images"])
        shape = (n, spec["height"], spec["width"], spec["channels"])
        path = self.directory / f"{split}.images"
        if not path.is_file() or path.stat().st_size != int(np.prod(shape)):
            raise ValueError(f"{path} does not hold {n} images of {shape[1:]}: the dataset is damaged; prepare it again")
        self.images = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
        self.labels = np.fromfile(self.directory / f"{split}.labels", dtype=np.int16)
        if len(self.labels) != n or (n and (self.labels.min() < 0 or self.labels.max() >= len(self.meta["classes"]))):
            raise ValueError(f"{self.directory / (split + '.labels')} is damaged; prepare the dataset again")

    def __len__(self) -> int:
        return len(self.labels)


def to_tensor(images: np.ndarray, spec: dict):
    """uint8 [B, H, W, C] -> normalised float [B, C, H, W]."""
    import torch

    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"]).clamp(min=1e-6).view(1, -1, 1, 1)
    return (x - mean) / std


def load_image(path: str | Path, spec: dict) -> np.ndarray:
    """One image file as uint8 [H, W, C] in the dataset's shape (converted and resized as needed); a file
    that is not a readable image raises ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if spec["channels"] == 1 else "RGB")
            if im.size != (spec["width"], spec["height"]):
                im = im.resize((spec["width"], spec["height"]), Image.Resampling.BICUBIC)
            array = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__})") from None
    return array[..., None] if array.ndim == 2 else array
