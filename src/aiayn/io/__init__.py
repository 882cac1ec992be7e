"""Reading and writing what aiayn keeps on disk: checkpoints (io.checkpoint)."""
