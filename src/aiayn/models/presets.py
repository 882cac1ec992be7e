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
}
