"""Every named model shape, in one place: preset name -> (architecture, its config's values).

`aiayn train --config NAME` (configs/NAME.yaml: the training recipe) names one of these for its
model, and `TransformerConfig.preset(NAME)` builds the same config, so a preset means one thing.
"""

PRESETS: dict[str, tuple[str, dict]] = {
    # Table 3 of the paper.
    "base": ("transformer", dict(d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6, dropout=0.1)),
    "big": ("transformer", dict(d_model=1024, n_heads=16, d_ff=4096, n_encoder_layers=6, n_decoder_layers=6, dropout=0.3)),
    # Sized for CPUs: `small` trains a usable model in half an hour, `tiny` in minutes. Pre-norm: it stays
    # stable at the high learning rates of short runs (post-norm stalled at 2e-3 on the Bible valid set).
    "small": ("transformer", dict(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=4, n_decoder_layers=4, dropout=0.1, pre_norm=True)),
    "tiny": ("transformer", dict(d_model=128, n_heads=4, d_ff=512, n_encoder_layers=2, n_decoder_layers=2, dropout=0.1, pre_norm=True)),
    # RNNsearch (models/rnnsearch.py): the paper's sizes (Bahdanau et al. 2014, Appendix A), and one of about
    # tiny's parameter count (1.88M against 1.95M at a vocabulary of 8,000) with the output tied to the embeddings.
    "rnnsearch": ("rnnsearch", dict(d_embed=620, d_hidden=1000, d_attn=1000, d_output=500, dropout=0.2)),
    "rnnsearch-tiny": ("rnnsearch", dict(d_embed=128, d_hidden=160, d_attn=160, d_output=128, tie_output=True, dropout=0.2)),
    # GPT (models/gpt.py). gpt-tiny: nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide); gpt-small: its
    # GPU recipe for characters (6 layers, 384 wide, context 256); gpt2: GPT-2's 124M shape.
    "gpt-tiny": ("gpt", dict(d_model=128, n_heads=4, d_ff=512, n_layers=4, context=128, dropout=0.0, attn_dropout=0.0)),
    "gpt-small": ("gpt", dict(d_model=384, n_heads=6, d_ff=1536, n_layers=6, context=256, dropout=0.2, attn_dropout=0.2)),
    "gpt2": ("gpt", dict(d_model=768, n_heads=12, d_ff=3072, n_layers=12, context=1024, dropout=0.1, attn_dropout=0.1)),
    # ViT (models/vit.py); image_size, in_channels and n_classes come from the dataset. vit-tiny is sized for
    # CPUs (patch 4: 7 × 7 patches of a 28 × 28 image); vit-small is DeiT-S's shape, vit-base ViT-B/16.
    "vit-tiny": (
        "vit",
        dict(image_size=28, patch_size=4, in_channels=1, n_classes=10, d_model=128, n_heads=4, d_ff=512, n_layers=6, drop_path=0.1),
    ),
    "vit-small": ("vit", dict(image_size=224, patch_size=16, d_model=384, n_heads=6, d_ff=1536, n_layers=12, drop_path=0.1)),
    "vit-base": ("vit", dict(image_size=224, patch_size=16, d_model=768, n_heads=12, d_ff=3072, n_layers=12, drop_path=0.1)),
    # CLIP (models/clip.py); image_size, in_channels, vocab_size and context come from the dataset. clip-tiny is
    # sized for CPUs (32 × 32 images in 4 × 4 patches, 4 image and 3 text layers of 128); clip-b32 is ViT-B/32's shape.
    "clip-tiny": (
        "clip",
        dict(
            image_size=32,
            patch_size=4,
            vision_d_model=128,
            vision_n_heads=4,
            vision_d_ff=512,
            vision_n_layers=4,
            context=32,
            text_d_model=128,
            text_n_heads=4,
            text_d_ff=512,
            text_n_layers=3,
            d_embed=128,
        ),
    ),
    "clip-b32": ("clip", dict()),
    # DiT (models/dit.py); image_size, in_channels and n_classes come from the dataset. dit-tiny is sized for CPUs
    # (28 × 28 images in 4 × 4 patches, 6 layers of 128, GELU (erf): PyTorch's CPU kernels run it and its gradient
    # in under half tanh's time); dit-s4 and dit-b4 are DiT-S/4's and DiT-B/4's shapes.
    "dit-tiny": ("dit", dict(image_size=28, patch_size=4, d_model=128, n_heads=4, d_ff=512, n_layers=6, activation="gelu")),
    "dit-s4": ("dit", dict(image_size=32, patch_size=4, d_model=384, n_heads=6, d_ff=1536, n_layers=12)),
    "dit-b4": ("dit", dict(image_size=32, patch_size=4, d_model=768, n_heads=12, d_ff=3072, n_layers=12)),
}
