"""`aiayn serve` on an image-text model (CLIP).

  POST /v1/zero-shot   {"image": "<base64 PNG/JPEG/...>", "labels": ["a cat", ...], "templates": ["a photo of a {}."]}
                       → {"labels": [{"label", "probability"}]} (most probable first; labels default to the model's classes)
  POST /v1/embeddings  {"texts": [...]} or {"image": "<base64>"} → {"embeddings": [[...]]} (L2-normalised, one space)

Images are decoded in memory as for the classifier (serve.classify.decode_image); work runs on
the model thread, between batches.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from aiayn.serve.classify import decode_image
from aiayn.zero_shot import DualEncoder

MAX_LABELS = 1000


class ZeroShotRequest(BaseModel):
    image: str = Field(..., min_length=1, description="the image file's bytes, base64-encoded (a data: URL prefix is allowed)")
    labels: list[str] | None = Field(None, description="class names (default: the classes the model's dataset named)")
    templates: list[str] | None = Field(None, description="prompt templates with '{}' where the label goes (default: the model's)")


class EmbeddingsRequest(BaseModel):
    texts: list[str] | None = None
    image: str | None = None


def model_info(enc: DualEncoder, name: str, path: str | None) -> dict:
    c = enc.model.config
    return {
        "id": name,
        "task": "image-text",
        "architecture": "clip",
        "path": path,
        "parameters": enc.model.num_parameters(),
        "classes": (enc.zero_shot or {}).get("classes") or [],
        "templates": enc.templates,
        "config": {
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "channels": c.in_channels,
            "vision_layers": c.vision_n_layers,
            "vision_d_model": c.vision_d_model,
            "text_layers": c.text_n_layers,
            "text_d_model": c.text_d_model,
            "d_embed": c.d_embed,
            "context": c.context,
        },
        "device": str(enc.device),
        "precision": enc.precision,
    }


def add_routes(app: FastAPI, enc: DualEncoder, batcher, settings, run) -> None:
    def check_texts(texts: list[str], what: str) -> None:
        if len(texts) > MAX_LABELS:
            raise HTTPException(413, f"{len(texts)} {what}; the limit is {MAX_LABELS}")
        for i, text in enumerate(texts):
            if not text.strip():
                raise HTTPException(422, f"{what} {i} is empty")
            if len(text) > settings.max_chars:
                raise HTTPException(413, f"{what} {i} has {len(text)} characters; the limit is {settings.max_chars}")

    @app.post("/v1/zero-shot", tags=["image-text"])
    async def zero_shot(req: ZeroShotRequest) -> dict:
        """The probability of each label for the image: softmax over the scaled cosine of the image and each
        label's prompt-ensembled embedding."""
        labels = req.labels if req.labels is not None else (enc.zero_shot or {}).get("classes")
        if not labels:
            raise HTTPException(422, "labels: give at least one label (this model's dataset named no classes)")
        check_texts(labels, "label")
        if len(set(labels)) != len(labels):
            raise HTTPException(422, "labels: a label is given twice")
        if req.templates is not None:
            check_texts(req.templates, "template")
            if not req.templates or any("{}" not in t for t in req.templates):
                raise HTTPException(422, "templates: each needs '{}' where the label goes")
        image = decode_image(req.image, enc.spec)
        probs = await run(batcher.run_exclusive(lambda: enc.classify(image[None], labels, req.templates)[0].tolist()), "classification")
        ranked = sorted(zip(labels, probs), key=lambda x: -x[1])
        return {"labels": [{"label": label, "probability": round(p, 6)} for label, p in ranked]}

    @app.post("/v1/embeddings", tags=["image-text"])
    async def embeddings(req: EmbeddingsRequest) -> dict:
        """Unit vectors of the joint space for texts or for one image (their dot products are cosine similarities)."""
        if (req.texts is None) == (req.image is None):
            raise HTTPException(422, "give texts or image (one of them)")
        if req.texts is not None:
            check_texts(req.texts, "text")
            vectors = await run(batcher.run_exclusive(lambda: enc.encode_texts(req.texts)), "embedding")
        else:
            image = decode_image(req.image, enc.spec)
            vectors = await run(batcher.run_exclusive(lambda: enc.encode_images(image[None])), "embedding")
        return {"embeddings": [[round(x, 6) for x in row] for row in vectors.tolist()]}
