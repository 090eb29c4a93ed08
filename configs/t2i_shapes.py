r"""Text-to-image and image-to-text on the built-in shapes data set.

Presets by argument: `tiny` (the demo: a 1.0M-parameter, 6-block decoder and a factorised patch FSQ
tokenizer, two sub-codes per cell naming its shape and its colour, with 2-D positions for
image codes; trained and judged in about 15 minutes on 2 CPU cores), `tiny_flat` (the demo
before that: one FSQ code per cell, 1-D positions; docs/first_run.md compares them),
`tiny_rar` and `tiny_randar` (`tiny_flat` trained in RAR's annealed random order or RandAR's
random order with position instructions: docs/decoding.md), `tiny_var` (next-scale prediction,
VAR: token maps of side 1 to 4 from a multi-scale tokenizer, one forward pass per map, on
`tiny`'s budget: docs/decoding.md) and `test` (seconds, for the
tests; its text tokenizer is a tiny BPE, so its stages start with `mmar text-tokenizer-train`).

    mmar demo --config=configs/t2i_shapes.py:tiny --workdir=runs/demo
    mmar demo --config=configs/t2i_shapes.py:tiny_randar --workdir=runs/demo_randar
    mmar tokenizer-train --config=configs/t2i_shapes.py:tiny --workdir=runs/demo
    mmar train  --config=configs/t2i_shapes.py:tiny --workdir=runs/demo --config.train.steps=100

A preset lists what it chooses; every other field keeps its default from mmar/schema.py
(`mmar train --config=configs/t2i_shapes.py:tiny --print-config` shows them all).

Parameter counts (decoder, embeddings included; checked by tests/test_configs.py):
    tiny: 985,088    tiny_flat: 722,304    tiny_rar: 724,480    tiny_randar: 722,304
    tiny_var: 1,247,744    test: 51,424
"""
import ml_collections

from mmar import schema

PRESETS = ("tiny", "tiny_flat", "tiny_rar", "tiny_randar", "tiny_var", "test")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r} for configs/t2i_shapes.py; one of {PRESETS}")
    c = ml_collections.ConfigDict()
    c.preset = arg
    c.seed = 0
    c.data = dict(name="shapes", image_size=32, grid=4, max_objects=3, num_train=20000,
                  num_test=200, num_unseen=200,
                  heldout_combos=("green triangle", "blue circle", "red square"),
                  i2t_fraction=0.7,     # share of training pairs that put the image first
                  seq_len=64)           # bos + caption + boi + codes + eoi + eos, padded
    # One FSQ code per 8x8 cell (docs/design_notes.md).
    c.image_tokenizer = dict(quantizer="fsq", fsq=dict(levels=(5, 5, 5)), arch="patch",
                             downsample=8, loss="l2",
                             train=dict(steps=2000, batch_size=64, lr=3e-3, warmup_steps=100,
                                        log_every=200))
    c.model = dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=256,
                   qk_norm=True)
    c.train = dict(steps=3000, batch_size=32, lr=3e-3, warmup_steps=100, schedule="cosine",
                   min_lr_ratio=0.1, weight_decay=0.05, grad_clip=1.0, z_loss=1e-4,
                   log_every=50)
    c.checkpoint = dict(every_steps=1000, max_to_keep=2)
    c.sample = dict(temperature_text=0.0, temperature_image=1.0, cfg_scale_image=2.0,
                    max_text_len=48, batch_size=50, seed=0)
    c.eval = dict(num_examples=200, grid_columns=10, tasks=("frechet",))

    if arg == "tiny":
        # Two sub-codes per 8x8 cell (fsq.groups): a mask and a colour (arch "patch_alpha"),
        # so a colour-shape pair never seen in training is two sub-codes that were; 2 FSQ
        # channels of 5 levels per sub-code (25 ids each; 1 seed of 8 merged circles and
        # squares, which the tokenizer check stops; 3 channels merged shapes on 2 seeds of 3).
        # 2-D positions let the decoder read rows and columns (relations).
        # docs/first_run.md and docs/tokenizers.md give the measurements.
        c.image_tokenizer.update(arch="patch_alpha", fsq=dict(levels=(5,) * 4, groups=2))
        c.image_tokenizer.train.steps = 4000
        c.data.seq_len = 80           # 16 cells x 2 sub-codes
        c.model.image_positions = "2d"
        c.train.steps = 6000          # twice the codes per image; 3,000 steps drew 0.930
        # 6 blocks, not 4: on seed 1 the unseen pairs went 0.700 -> 0.955 (9,000 steps of
        # 4 blocks: 0.665); unrolled, the same numbers about 10% faster (docs/first_run.md)
        c.model.update(n_layers=6, scan_layers=False)
        c.sample.temperature_image = 0.7   # 0.5 / 0.7 / 1.0 drew 0.950 / 0.960 / 0.930 (seed 0)
        c.sample.seed = -1            # `--config.seed=N` re-seeds sampling too
    if arg == "tiny_rar":
        c.data.image_order = "rar"
    if arg == "tiny_randar":
        c.data.update(image_order="randar", seq_len=80)  # 16 more tokens: the P tokens
    if arg == "tiny_var":
        # Next-scale prediction (VAR): token maps of side 1, 2, 3, 4 from one multi-scale
        # codebook, each map drawn in one forward pass (docs/decoding.md). The budget of
        # `tiny`: its tokenizer and decoder steps, its sampling settings.
        # 1,024 codes: with 256 (and 512) one scene in 50 (200) reconstructed wrong, three
        # objects of one colour whose coarse maps leave residuals no code matched
        c.image_tokenizer.update(quantizer="msrq", msrq=dict(scales=(1, 2, 3, 4),
                                                             codebook_size=1024,
                                                             codebook_dim=8))
        c.image_tokenizer.train.steps = 4000
        c.data.update(image_order="next_scale", seq_len=80)   # 30 codes per image
        c.model.update(n_layers=6, scan_layers=False)          # `tiny`'s decoder
        c.train.steps = 6000
        c.sample.update(temperature_image=0.7, seed=-1)
    if arg == "test":
        c.data.update(num_train=256, num_test=16, num_unseen=16, shard_records=64)
        # a tiny byte-level BPE (`mmar text-tokenizer-train`): 44 merges over the 256 bytes
        c.vocab = dict(text_tokenizer="bpe", text_vocab_size=300)
        c.image_tokenizer.update(arch="conv", channels=8, channel_mult=(1, 1, 1))
        c.image_tokenizer.train.update(steps=20, batch_size=16, log_every=10)
        c.image_tokenizer.check = dict(mode="warn")   # 20 steps do not separate contents
        c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                       mlp_dim=64)
        c.train.update(steps=12, batch_size=8, warmup_steps=2, log_every=4)
        c.checkpoint.update(every_steps=6)
        c.sample.update(batch_size=8)
        c.eval.update(num_examples=8, grid_columns=4, tasks=("stories", "digits", "frechet"))
    return schema.complete(c)
