"""Tasks: what is specific to a job — its data and batches, its loss, its validation metric, and
the assets a model needs beside its weights (a translation model's tokenizers). The trainer,
checkpoints and generation are generic; a dataset's meta.json names its task (default
"translation"), and `for_dataset` builds it. One kind of data can serve several tasks: a folder
of labelled images trains a classifier (ViT) or a class-conditional generator (DiT); the model
preset chooses.
"""

from __future__ import annotations

from pathlib import Path

TASKS = {
    "translation": "aiayn.tasks.translation:TranslationTask",
    "lm": "aiayn.tasks.lm:LanguageModelTask",
    "images": "aiayn.tasks.images:ImageClassificationTask",
    "image-text": "aiayn.tasks.image_text:ImageTextTask",
    "image-generation": "aiayn.tasks.image_generation:ImageGenerationTask",
}
DATA_OF = {"image-generation": "images"}  # a task that trains on another task's datasets


def for_dataset(data_dir: str | Path, preset: str | None = None):
    """The task of a dataset made by 'aiayn prepare', as its meta.json names it; or, where the model
    `preset` serves another task on that kind of data (DiT on labelled images), that task."""
    import importlib

    from aiayn import models
    from aiayn.data.binarize import load_meta

    name = load_meta(data_dir).get("task", "translation")
    if name not in TASKS:
        raise ValueError(f"{data_dir}: unknown task {name!r} in meta.json (one of {', '.join(TASKS)})")
    if preset in models.PRESETS:
        serves = models.architecture(models.PRESETS[preset][0]).task
        if DATA_OF.get(serves) == name:
            name = serves
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(data_dir)
