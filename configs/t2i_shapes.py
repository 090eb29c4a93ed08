r"""Text-to-image and image-to-text on the built-in shapes data set.

Presets by argument: `tiny` (the demo: a 0.7M-parameter decoder and a patch FSQ tokenizer,
trained and judged in about 15 minutes on 2 CPU cores), `tiny_rar` and `tiny_randar` (the
same, trained in RAR's annealed random order or RandAR's random order with position
instructions: docs/decoding.md) and `test` (seconds, for the tests).

    mmar demo --config=configs/t2i_shapes.py:tiny --workdir=runs/demo
    mmar demo --config=configs/t2i_shapes.py:tiny_randar --workdir=runs/demo_randar
    mmar tokenizer-train --config=configs/t2i_shapes.py:tiny --workdir=runs/demo
    mmar train  --config=configs/t2i_shapes.py:tiny --workdir=runs/demo --config.train.steps=100

Parameter counts (decoder, embeddings included; checked by tests/test_configs.py):
    tiny: 722,304    tiny_rar: 724,480    tiny_randar: 722,304    test: 51,424
"""
import ml_collections

PRESETS = ("tiny", "tiny_rar", "tiny_randar", "test")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r} for configs/t2i_shapes.py; one of {PRESETS}")
    c = ml_collections.ConfigDict()
    c.preset = arg
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        name="shapes",
        image_size=32, grid=4, max_objects=3, jitter=0, seed=0,
        colors=("red", "green", "blue", "yellow", "purple", "orange"),
        shapes=("circle", "square", "triangle"),
        heldout_combos=("green triangle", "blue circle", "red square"),
        num_train=20000, num_test=200, num_unseen=200,
        data_dir="",          # "" = $MMAR_DATA_DIR or ~/.cache/mmar/datasets
        i2t_fraction=0.7,     # share of training pairs that put the image first
        seq_len=64,           # bos + caption + boi + codes + eoi + eos, padded
        num_workers=0,        # Grain worker processes (0 = in the main process)
        loss_weight_text=1.0,
        loss_weight_image=1.0,
        caption_dropout=0.0,  # P(drop a caption before its image): CFG training (docs/data.md)
        pack=False,           # several documents per row (segment_ids keep them apart)
        pack_bins=16,         # rows filled at a time by first-fit packing
        oversize="split",     # a document longer than seq_len: "split" (never in an image) or "drop"
        max_bad_fraction=0.01,  # stop with one error past this share of bad records / drops
        mixture="",           # "" = shapes pairs; or e.g. "shapes:0.6,stories:0.3,digits:0.1"
        pretokenized=False,   # True: train reads WORKDIR/tokens from `mmar pretokenize`
        shard_records=1024,   # records per token shard (a kill loses at most one shard)
        image_order="raster",  # or "rar" / "randar" (mmar/data/orders.py, docs/decoding.md)
        rar_anneal_start=0.25,  # rar: permute every row until this fraction of train.steps,
        rar_anneal_end=0.75,    # then P(permute) decays linearly to 0 at this fraction
    ))
    c.vocab = ml_collections.ConfigDict(dict(text_tokenizer="bytes"))
    c.image_tokenizer = ml_collections.ConfigDict(dict(
        quantizer="fsq", levels=(5, 5, 5), downsample=8,
        arch="patch",         # one code per 8x8 cell (see docs/design_notes.md); or "conv"
        channels=32, channel_mult=(1, 2, 4), num_res_blocks=0, norm="group", loss="l2",
        steps=2000, batch_size=64, lr=3e-3, warmup_steps=100, log_every=200,
        # quantizer="vq" | "lfq" | "rq" (docs/tokenizers.md); FSQ reads only `levels`.
        codebook_size=256, codebook_dim=8,   # vq, rq (rq: per depth)
        l2_norm=True, commitment=0.25,       # vq: LlamaGen's l2-normalised codes
        ema=False, ema_decay=0.99, dead_code_restart=False,   # vq options
        lfq_bits=8, entropy_weight=0.1, entropy_gamma=1.0, entropy_temperature=0.1,
        rq_depth=2, rq_shared=False,         # rq: depth-d codes get ids offset d*codebook_size
        disc_weight=0.0, disc_start=500, disc_channels=32,    # > 0: PatchGAN adversarial loss
    ))
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=0,         # 0 = derived from the text tokenizer and the image codebook
        d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=256,
        rope_theta=10000.0, qk_norm=True, tie_embeddings=False, norm_eps=1e-5,
        dtype="float32", param_dtype="float32", remat="none", init_std=0.02,
        scan_layers=True,     # False: unroll the layer scan (faster step, longer compile)
        attention="xla",      # "blockwise" (long rows: no S x S scores), "cudnn" (GPU), "splash" (TPU)
        attention_block=512,  # queries per block for "blockwise"
        # Mixture-of-Transformers: per-modality block weights (docs/design_notes.md)
        mot=False, num_modalities=2, mot_matmul="auto", mot_tile=128,
    ))
    c.train = ml_collections.ConfigDict(dict(
        steps=3000, batch_size=32, lr=3e-3, warmup_steps=100, schedule="cosine",
        min_lr_ratio=0.1, weight_decay=0.05, b1=0.9, b2=0.95, grad_clip=1.0, z_loss=1e-4,
        log_every=50,
        grad_accum=1,         # microbatches per step; batch_size is the global batch
        on_nonfinite="stop",  # or "skip": drop the step, go on (up to max_skipped_steps)
        max_skipped_steps=100,
        profile_steps=(),     # (first, last): profiler trace of those steps -> workdir/profile
    ))
    # Mesh axes inside a slice (ICI) and across slices (DCN); -1 = the rest. See docs/training.md.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                            dcn_tensor=1, strategy="fsdp_tp"))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, max_to_keep=2))
    c.sample = ml_collections.ConfigDict(dict(
        temperature_text=0.0, temperature_image=1.0, top_k_text=0, top_k_image=0,
        top_p_text=1.0, top_p_image=1.0,  # nucleus sampling (1 = off)
        cfg_scale_image=2.0,  # classifier-free guidance for images (1 = off, 0 = unconditional)
        cfg_interval_image=(0.0, 1.0),  # guide codes whose raster fraction is in [a, b)
        interleaved_tokens=64,  # new tokens per continued story (`mmar sample`, interleaved)
        # RandAR models (data.image_order="randar"): codes per forward pass, "constant"
        # (randar_tokens_per_step) or RandAR's "cosine" in randar_steps (docs/decoding.md)
        randar_schedule="constant", randar_tokens_per_step=1, randar_steps=8,
        max_text_len=48, batch_size=50, seed=0,
        # "sjd" | "zipar": parallel image decoding (docs/decoding.md)
        image_decoder="plain", sjd_window=8, sjd_acceptance="probabilistic",
        lantern_k=6, lantern_delta=0.0, zipar_window=2,
    ))
    c.eval = ml_collections.ConfigDict(dict(
        num_examples=200, grid_columns=10,
        # beside t2i / i2t (docs/evaluation.md). The demo trains on shape pairs only, so
        # "stories" and "digits" (next-image and digit accuracy) are for mixture runs.
        tasks=("frechet",),
        inception_weights="",  # a Keras InceptionV3 .weights.h5 for fid_inception ("" = off)
    ))

    if arg == "tiny_rar":
        c.data.image_order = "rar"
    if arg == "tiny_randar":
        c.data.update(image_order="randar", seq_len=80)  # 16 more tokens: the P tokens
    if arg == "test":
        c.data.update(num_train=256, num_test=16, num_unseen=16, shard_records=64)
        c.image_tokenizer.update(arch="conv", channels=8, channel_mult=(1, 1, 1), steps=20,
                                 batch_size=16, log_every=10)
        c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                       mlp_dim=64)
        c.train.update(steps=12, batch_size=8, warmup_steps=2, log_every=4)
        c.checkpoint.update(every_steps=6)
        c.sample.update(batch_size=8)
        c.eval.update(num_examples=8, grid_columns=4, tasks=("stories", "digits", "frechet"))
    c.lock()
    return c
