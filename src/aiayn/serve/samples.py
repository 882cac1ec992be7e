"""`aiayn serve` on an image generator (DiT).

  POST /v1/samples  {"class": "Sneaker" | 7, "n": 8, "steps": 50, "guidance": 2.0, "eta": 0.0, "seed": 0,
                     "trajectory": true, "guidance_interval": [0.28, 5.42]}
                    → {"class", "images": ["data:image/png;base64,...", ...],
                       "steps": ["data:image/png;base64,...", ...]}  (with trajectory: the n images'
                       estimate of themselves after each step, one strip a step)

Sampling runs on the model thread, between batches; n × steps is bounded (413 beyond).
"""

from __future__ import annotations

import base64
import io

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from aiayn.diffusion import check_guidance_interval
from aiayn.generate.images import ImageGenerator, grid

MAX_IMAGES = 64
MAX_STEPS = 1000
MAX_COST = 64 * 100  # images × steps in one request


class SampleRequest(BaseModel):
    class_: str | int = Field(..., alias="class", description="a class name (case-insensitive) or index")
    n: int = Field(8, ge=1, le=MAX_IMAGES, description="images to draw")
    steps: int = Field(50, ge=1, le=MAX_STEPS, description="DDIM steps")
    guidance: float = Field(2.0, ge=0.0, le=20.0, description="classifier-free guidance scale (1: none)")
    guidance_interval: tuple[float, float] | None = Field(
        None, description="[low, high]: guide only the steps whose noise-to-signal ratio √((1 − ᾱ_t)/ᾱ_t) lies in (low, high]"
    )
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM's η: 0 deterministic, 1 DDPM's noise")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    trajectory: bool = Field(False, description="also return the estimate of the clean images after each step")


def png_url(picture) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def model_info(gen: ImageGenerator, name: str, path: str | None) -> dict:
    c = gen.model.config
    return {
        "id": name,
        "task": "image-generation",
        "architecture": "dit",
        "path": path,
        "parameters": gen.model.num_parameters(),
        "classes": gen.classes,
        "config": {
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "channels": c.in_channels,
            "layers": c.n_layers,
            "d_model": c.d_model,
            "noise_schedule": c.noise_schedule,
            "diffusion_steps": c.diffusion_steps,
        },
        "device": str(gen.device),
        "precision": gen.precision,
    }


def add_routes(app: FastAPI, gen: ImageGenerator, batcher, settings, run) -> None:
    from PIL import Image

    @app.post("/v1/samples", tags=["image-generation"])
    async def samples(req: SampleRequest) -> dict:
        """Draw n images of a class with DDIM and classifier-free guidance; the same seed draws the same images."""
        try:
            index = gen.class_index(req.class_)
        except ValueError as e:
            raise HTTPException(422, f"class: {e}") from None
        interval = req.guidance_interval
        if interval is not None:
            try:
                check_guidance_interval(interval)
            except ValueError as e:
                raise HTTPException(422, f"guidance_interval: {e}") from None
        if req.n * req.steps > MAX_COST:
            raise HTTPException(413, f"{req.n} images × {req.steps} steps; the limit is {MAX_COST} image-steps a request")

        def draw():
            return gen.sample(
                [index] * req.n, req.steps, req.guidance, req.eta, req.seed, trajectory=req.trajectory, guidance_interval=interval
            )

        images, steps = await run(batcher.run_exclusive(draw), "sampling")
        return {
            "class": gen.classes[index],
            "images": [png_url(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)) for image in images],
            "steps": [png_url(grid(frame, len(frame), pad=1)) for frame in steps],
        }
