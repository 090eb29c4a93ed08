"""ZipAR: its schedule, its reduction to raster decoding, and each code against full passes."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_sjd import CAPTIONS, _sampler, _setup

from mmar import config as config_lib
from mmar.sample import zipar
from mmar.sample.core import left_pad


@pytest.fixture(scope="module")
def setup(test_config):
    return _setup(test_config)


@pytest.fixture(scope="module")
def one_layer(test_config):
    """A one-layer decoder: its cached keys and values depend on each token and position
    only. (Deeper layers' cached keys reflect what a token saw when it was fed: a code fed
    before a code at an earlier raster position was drawn never sees that code, as in
    ZipAR's official code; a full forward over the codes in raster order is then no
    reference.)"""
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.model.n_layers = 1
    return _setup(config_lib.validate(cfg))


@pytest.mark.parametrize("height,width", [(1, 5), (2, 3), (4, 4), (5, 7), (8, 8)])
def test_plan_counts_and_rules(height, width):
    """Every code is drawn once; row r+1 starts only when row r has min(window, W) codes
    (row 1: all of row 0); a query sees exactly the live slots at or before its raster
    position; the pass count is the formula."""
    n = height * width
    for window in range(1, width + 2):
        p = zipar.plan(height, width, window)
        assert len(p["src"]) + 1 == zipar.forward_passes(height, width, window)
        targets = p["target"][p["target"] >= 0]
        assert sorted(targets.tolist()) == list(range(1, n))
        drawn = {0: 0}
        for s, row in enumerate(p["target"]):
            for k in row[row >= 0]:
                drawn[int(k)] = s + 1
        for k, step in drawn.items():
            r, c = divmod(k, width)
            if c == 0 and r >= 1:
                need = width if r == 1 else min(window, width)
                before = [j for j in range(need) if drawn[(r - 1) * width + j] < step]
                assert len(before) == need, (window, k)
        T = p["src"].shape[1]
        slot_pos = p["pos"].reshape(-1)
        real = (p["src"] == p["pos"]).reshape(-1)    # a fed code, not a stand-in
        for s in range(len(p["src"])):
            for t in range(T):
                if p["pos"][s, t] < 0:               # padding column
                    continue
                want = [j for j in range((s + 1) * T) if slot_pos[j] >= 0 and
                        slot_pos[j] <= p["pos"][s, t] and (j // T == s or real[j])]
                assert np.flatnonzero(p["visible"][s, t]).tolist() == want


@pytest.mark.parametrize("scale,temperature", [(1.0, 0.0), (2.0, 0.0), (2.0, 1.0)])
def test_window_at_least_width_is_plain_decoding(setup, scale, temperature):
    """Same keys -> the same codes as plain decoding, greedy and sampled, guided or not."""
    params = setup[2]
    fields = dict(temperature_image=temperature, cfg_scale_image=scale)
    want, plain_passes = _sampler(setup, **fields).images(params, CAPTIONS, 16,
                                                          jax.random.key(4))
    sampler = _sampler(setup, "zipar", **fields)
    for window in (4, 9):
        got, passes = sampler.images(params, CAPTIONS, 16, jax.random.key(4),
                                     zipar=dict(window=window))
        np.testing.assert_array_equal(got, want)
        assert passes == plain_passes == 16


@pytest.mark.parametrize("window", [1, 2])
def test_each_code_is_the_greedy_code_of_what_it_sees(one_layer, window):
    """Greedy, guided ZipAR on a 4x4 grid: every code equals the argmax of a full forward
    pass over the prompt and the codes its query could see (drawn earlier, raster position
    at or before its own, at their true positions), plus the stand-in when it has one."""
    setup = one_layer
    _, model_state, params, vocab = setup
    n, side, scale = 16, 4, 2.0
    sampler = _sampler(setup, "zipar", temperature_image=0.0, cfg_scale_image=scale)
    codes, passes = sampler.images(params, CAPTIONS, n, jax.random.key(0),
                                   zipar=dict(window=window))
    assert passes == zipar.forward_passes(side, side, window) < n
    p = zipar.plan(side, side, window)
    drawn = {0: 0}
    for s, row in enumerate(p["target"]):
        for k in row[row >= 0]:
            drawn[int(k)] = s + 1
    rows, positions, meta = [], [], []
    for b, caption in enumerate(CAPTIONS):
        for prompt in ([vocab.bos, *caption, vocab.boi], [vocab.bos, vocab.boi]):
            for s in range(len(p["src"])):
                for t in range(p["src"].shape[1]):
                    k, pos, src = p["target"][s, t], p["pos"][s, t], p["src"][s, t]
                    if k < 0:
                        continue
                    seen = [j for j in range(n) if drawn[j] <= s and j <= pos]
                    ids = [int(codes[b, j]) + vocab.image_offset for j in seen]
                    where = [len(prompt) + j for j in seen]
                    if src != pos:   # the stand-in: the code above, at the slot's position
                        ids.append(int(codes[b, src]) + vocab.image_offset)
                        where.append(len(prompt) + pos)
                    rows.append(prompt + ids)
                    positions.append(list(range(len(prompt))) + where)
                    meta.append((b, k))
    tokens, _, segments = left_pad(rows, vocab.pad)
    pos_arr = np.zeros_like(tokens)
    for i, ps in enumerate(positions):
        pos_arr[i, tokens.shape[1] - len(ps):] = ps
    forward = jax.jit(lambda prm, t, q, g: model_state.merge(prm)(t, q, g))
    logits = np.asarray(forward(params, jnp.asarray(tokens), jnp.asarray(pos_arr),
                                jnp.asarray(segments)))[:, -1]
    half = len(rows) // 2 // len(CAPTIONS)
    allowed = sampler.allowed["image"]
    checked = 0
    for b in range(len(CAPTIONS)):
        cond = logits[2 * b * half:(2 * b + 1) * half]
        uncond = logits[(2 * b + 1) * half:(2 * b + 2) * half]
        guided = uncond + scale * (cond - uncond)
        for i, (bb, k) in enumerate(meta[2 * b * half:(2 * b + 1) * half]):
            assert bb == b
            want = int(np.argmax(np.where(allowed, guided[i], -np.inf))) - vocab.image_offset
            assert codes[b, k] == want, (b, k)
            checked += 1
    assert checked == len(CAPTIONS) * (n - 1)
