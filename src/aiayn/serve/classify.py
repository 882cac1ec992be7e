"""`aiayn serve` on an image classifier (ViT).

  POST /v1/classify  {"image": "<base64 PNG/JPEG/...>", "top_k": 3, "rollout": true}
                     → {"labels": [{"label", "probability"}], "rollout": [[...]] (grid × grid) }

The image is decoded with Pillow in memory (never written to disk); one that is not an image is
answered 422 with a clear message. Classification runs on the model thread, between batches.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from aiayn.vision import Classifier


class ClassifyRequest(BaseModel):
    image: str = Field(..., min_length=1, description="the image file's bytes, base64-encoded (a data: URL prefix is allowed)")
    top_k: int = Field(3, ge=1, le=100)
    rollout: bool = False


def model_info(clf: Classifier, name: str, path: str | None) -> dict:
    c = clf.model.config
    return {
        "id": name,
        "task": "images",
        "path": path,
        "parameters": clf.model.num_parameters(),
        "classes": clf.classes,
        "config": {
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "channels": c.in_channels,
            "d_model": c.d_model,
            "heads": c.n_heads,
            "layers": c.n_layers,
        },
        "device": str(clf.device),
        "precision": clf.precision,
    }


def decode_image(data: str, spec: dict) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, "image: not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > 40_000_000:
                raise HTTPException(413, f"image: {im.width}×{im.height} pixels is more than this server decodes")
            im.load()
            im = im.convert("L" if spec["channels"] == 1 else "RGB")
            if im.size != (spec["width"], spec["height"]):
                im = im.resize((spec["width"], spec["height"]), Image.Resampling.BICUBIC)
            array = np.asarray(im, dtype=np.uint8)
    except HTTPException:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise HTTPException(422, f"image: not a readable image ({type(e).__name__})") from None
    return array[..., None] if array.ndim == 2 else array


def add_routes(app: FastAPI, clf: Classifier, batcher, settings, run) -> None:
    @app.post("/v1/classify", tags=["images"])
    async def classify(req: ClassifyRequest) -> dict:
        """The image's most probable classes, and with rollout=true the attention rollout over its patch grid."""
        image = decode_image(req.image, clf.spec)

        def work():
            if req.rollout:
                grid, _ = clf.rollout(image)
                return clf.classify(image[None], req.top_k)[0], np.round(grid, 5).tolist()
            return clf.classify(image[None], req.top_k)[0], None

        labels, grid = await run(batcher.run_exclusive(work), "classification")
        out = {"labels": [{"label": c, "probability": round(p, 6)} for c, p in labels]}
        if grid is not None:
            out["rollout"] = grid
        return out
