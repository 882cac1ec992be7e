"""Tasks: what is specific to a job — its data and batches, its loss, its validation metric, and
the assets a model needs beside its weights (a translation model's tokenizers). The trainer,
checkpoints and generation are generic; a dataset's meta.json names its task (default
"translation"), and `for_dataset` builds it.
"""

from __future__ import annotations

from pathlib import Path

TASKS = {
    "translation": "aiayn.tasks.translation:TranslationTask",
    "lm": "aiayn.tasks.lm:LanguageModelTask",
    "images": "aiayn.tasks.images:ImageClassificationTask",
    "image-text": "aiayn.tasks.image_text:ImageTextTask",
}


def for_dataset(data_dir: str | Path):
    """The task of a dataset made by 'aiayn prepare', as its meta.json names it."""
    import importlib

    from aiayn.data.binarize import load_meta

    name = load_meta(data_dir).get("task", "translation")
    if name not in TASKS:
        raise ValueError(f"{data_dir}: unknown task {name!r} in meta.json (one of {', '.join(TASKS)})")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(data_dir)
