"""Decoding: text, images and interleaved documents from a trained decoder.

- core: what every decoder shares (prompt padding, the logits warp, guidance, allowed ids,
  text-to-image batches);
- plain: one token per forward pass (images in raster / RAR order, captions, documents);
- sjd: speculative Jacobi decoding and LANTERN (raster-order images);
- zipar: ZipAR, rows of the code grid in parallel (raster-order images);
- randar: RandAR, any order and several codes per pass, in- and out-painting;
- dispatch: picks the image decoder from `data.image_order` and `sample.image_decoder`.

The decoders depend on core, not on each other; only dispatch imports them all.
"""
