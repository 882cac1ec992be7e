import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AIAYN_SHARED", REPO.parent / "shared"))
BIBLE = SHARED / "data" / "bible-en-es"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shipped(tmp_path_factory):
    """A 2,000-pair slice of the shipped Bible corpus as files: {split: (en, es)}."""
    from aiayn.data.shipped import write_shipped_corpus

    return write_shipped_corpus(tmp_path_factory.mktemp("shipped"), limit={"train": 2000, "valid": 200, "test": 200})


@pytest.fixture(scope="session")
def small_dataset(shipped, tmp_path_factory):
    """A prepared dataset (joint BPE of 1,000 pieces) from the 2,000-pair slice."""
    from aiayn.data import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("data") / "bible-small"
    prepare(dict(shipped), out, PrepareOptions(vocab_size=1000, workers=1, progress=False), log=lambda *a: None)
    return out


@pytest.fixture
def bible_dir():
    if not (BIBLE / "train.en").is_file():
        pytest.skip(f"the shared Bible corpus is not at {BIBLE} (set AIAYN_SHARED to its parent's parent)")
    return BIBLE


@pytest.fixture(scope="session")
def trained_run(small_dataset, tmp_path_factory):
    """A tiny model trained for a few hundred updates on the 2,000-pair slice (its run directory)."""
    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig.from_dict(
        {
            "model": {
                "preset": "tiny",
                "pre_norm": False,
                "d_model": 96,
                "d_ff": 256,
                "n_heads": 4,
                "n_encoder_layers": 2,
                "n_decoder_layers": 2,
            },
            "max_tokens": 1500,
            "lr_schedule": "inverse_sqrt",
            "lr": 0.004,
            "warmup_steps": 40,
            "max_updates": 250,
            "save_every": 125,
            "validate_every": 0,
            "valid_bleu": False,
            "log_every": 1000,
            "threads": 2,
            "precision": "fp32",  # the same model on every CPU (auto is bf16 where the CPU has bf16 units)
        }
    )
    Trainer(cfg, small_dataset, run, log=lambda *a: None, progress=False).train()
    return run


@pytest.fixture(scope="session")
def trained(trained_run):
    """(model, checkpoint) of trained_run's last checkpoint."""
    from aiayn.io.checkpoint import load_model

    return load_model(trained_run / "checkpoints" / "step-00000250.safetensors")
