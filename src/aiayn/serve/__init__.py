"""`aiayn serve`: a translation service with dynamic batching and a web page (needs the `serve` extra)."""

from aiayn.serve.app import ServeSettings, create_app, load_translator, serve
from aiayn.serve.batcher import Batcher, DecodeKey

__all__ = ["Batcher", "DecodeKey", "ServeSettings", "create_app", "load_translator", "serve"]
