"""Mixture-of-Transformers (MoT, Liang et al. 2024): one copy of every block weight per modality.

`model.mot.enabled=True` gives every non-embedding weight of a block (q, k, v, o, the MLP, and the
norms: attn_norm, mlp_norm, q_norm, k_norm) a leading `modality` axis of size
`model.mot.num_modalities` (2: text, image). A token is projected with its own modality's copy;
attention stays global (every token attends over the whole sequence as in the dense model,
with any `model.attention` implementation). The embedding table, the final norm and the output
head are shared: they are the token space, not a block.

Each token pays for one copy only. The tokens of a batch (all B * S of them, or B * T when
decoding) are put in modality order once per forward (a stable counting sort: `route`), and
the residual stream stays in that order between blocks; only attention needs the original
order, so each block unsorts q/k/v (one gather) and sorts the attention output back (one
gather). Every projection is then a grouped matmul of contiguous row groups:

- `tiled` (default off TPU): each modality's rows (contiguous after the sort) are cut into
  windows, starting at the modality's first row: as many as fit of the largest size
  `mot.tile * 2^j` not above B * S, then at most one of each smaller size (the binary
  digits of the rest), and one of `model.mot.tile` rows that rounds up. One `fori_loop` per
  modality and size multiplies them by that modality's weight (a loop-invariant operand: no
  cond, no per-window weight copy), so a modality costs a handful of loop trips on large
  windows (each trip has a fixed cost on XLA:CPU; docs/performance.md). The last window of
  modality m may run past its rows into m + 1's; the loops go in modality order, so m + 1's
  windows overwrite those rows afterwards, and `route` pads `mot.tile - 1` rows so the last
  modality's last window stays in bounds. Cost: one matmul per row plus at most
  mot.tile - 1 rows per modality. A custom VJP runs the backward pass the same way (dx by
  the transposed weight; dW per modality, accumulated over its windows, rows outside the
  modality masked out).
- `ragged`: `jax.lax.ragged_dot`; native grouped matmul on TPU, but XLA:CPU lowers it to one
  masked dense matmul per group (every token pays for every copy; docs/performance.md).

Sharding: under a mesh that splits the batch (`rules.use_mesh`), routing, the gathers and the
grouped matmuls run per batch shard in a `shard_map` over the batch axes (`_per_shard`): each
device sorts and multiplies its own rows, and the weights arrive whole on every shard (under
FSDP, XLA gathers them as it does for dense layers; the `tensor` axis stays automatic). A
sort over the global batch instead made XLA replicate the sorted stream, so every device ran
the blocks on the whole batch (docs/design_notes.md).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from mmar.model import attention
from mmar.model.layers import Attention, Context, param
from mmar.parallel import rules

MATMULS = ("auto", "tiled", "ragged")


def resolve_matmul(name: str) -> str:
    """`model.mot.matmul` for this platform, resolved once when the MoT layers are built:
    "auto" is `ragged` on TPU (a native grouped matmul there) and `tiled` elsewhere (on
    XLA:CPU `ragged` multiplies every token by every copy; docs/performance.md)."""
    if name == "auto":
        return "ragged" if jax.default_backend() == "tpu" else "tiled"
    return name


class Routing(NamedTuple):
    """Where each token goes. `modality` [B, S] (original order); `perm` [Np]: the original
    flat row of each sorted row (padding rows point at row 0); `inv` [B * S]: the sorted row
    of each original row; `groups` [Np]: modality of each sorted row (non-decreasing);
    `counts` [M]: real rows per modality; `sizes` [M]: the same with the padding rows counted
    in the last group (`ragged_dot` wants all rows covered). Np = B * S + tile - 1: the
    window of `tiled` is Np - B * S + 1 rows (`window_rows`)."""
    modality: jax.Array
    perm: jax.Array
    inv: jax.Array
    groups: jax.Array
    counts: jax.Array
    sizes: jax.Array


def _route_local(modality: jax.Array, num_modalities: int, tile: int) -> Routing:
    """A stable counting sort of the B * S tokens by modality, plus tile - 1 padding rows.

    Counting sort (one cumsum per modality) instead of argsort: O(N * M), and cheap on every
    backend. Padding rows take the last real row's modality, so they never add a boundary.
    """
    g = jnp.clip(modality.astype(jnp.int32), 0, num_modalities - 1)
    flat = g.reshape(-1)
    n = flat.shape[0]
    padded = n + min(tile, n) - 1
    onehot = flat[:, None] == jnp.arange(num_modalities)[None, :]
    counts = jnp.sum(onehot, axis=0, dtype=jnp.int32)
    offsets = jnp.cumsum(counts) - counts
    rank = jnp.cumsum(onehot, axis=0, dtype=jnp.int32) - 1
    inv = offsets[flat] + jnp.take_along_axis(rank, flat[:, None], axis=1)[:, 0]
    perm = jnp.zeros((padded,), jnp.int32).at[inv].set(jnp.arange(n, dtype=jnp.int32))
    groups = jnp.zeros((padded,), jnp.int32).at[inv].set(flat)
    groups = groups.at[n:].set(groups[n - 1])
    sizes = counts.at[groups[n - 1]].add(padded - n)
    return Routing(g, perm, inv, groups, counts, sizes)


def _batch_mesh():
    """(mesh, batch axes) when the active mesh (`rules.use_mesh`) splits the batch, else None."""
    active = rules.active()
    if active is None:
        return None
    mesh, table = active
    spec = rules.logical_to_spec(("batch",), table)[0] or ()
    axes = tuple(a for a in ((spec,) if isinstance(spec, str) else spec) if mesh.shape[a] > 1)
    return (mesh, axes) if axes else None


def _per_shard(fn, *args, replicated=()):
    """fn on each batch shard's rows (a `shard_map` over the batch axes; the other mesh axes
    stay automatic); args at the positions in `replicated` (weights) are whole on every
    shard. Without a batch-splitting mesh: fn(*args). `check_vma=False`: the custom VJPs
    inside carry no replication types; shard_map's transpose then sums the replicated
    weights' cotangents over the batch axes (the data-parallel gradient; tested)."""
    batch = _batch_mesh()
    if batch is None:
        return fn(*args)
    mesh, axes = batch
    specs = tuple(P() if i in replicated else P(axes) for i in range(len(args)))
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(axes),
                         axis_names=set(axes), check_vma=False)(*args)


def _local(r: Routing) -> Routing:
    """A shard's view of a routing: per-shard counts arrive as [1, M]."""
    return r._replace(counts=r.counts.reshape(-1), sizes=r.sizes.reshape(-1))


def route(modality: jax.Array, num_modalities: int, tile: int) -> Routing:
    """`_route_local` on each batch shard (rows never leave their device; a shard's `perm` /
    `inv` index its own rows, `counts` / `sizes` are [shards, M]); one sort without a mesh."""
    if _batch_mesh() is None:
        return _route_local(modality, num_modalities, tile)

    def local(m):
        r = _route_local(m, num_modalities, tile)
        return r._replace(counts=r.counts[None], sizes=r.sizes[None])

    return _per_shard(local, modality)


def window_rows(r: Routing) -> int:
    """The `tiled` window (static: from the shapes), `model.mot.tile` capped at B * S."""
    return r.perm.shape[0] - r.inv.shape[0] + 1


@jax.custom_vjp
def _gather_sorted(x, perm, inv):
    return x[perm]


def _gather_sorted_fwd(x, perm, inv):
    return x[perm], (perm, inv)


def _gather_sorted_bwd(res, dxs):
    # The transpose of a gather is a scatter-add, a serial loop on XLA:CPU; the transpose of
    # a permutation is the inverse permutation, a gather. Padding rows (copies of row 0) add
    # their cotangent to row 0.
    perm, inv = res
    n = inv.shape[0]
    return dxs[inv].at[0].add(jnp.sum(dxs[n:], axis=0)), None, None


_gather_sorted.defvjp(_gather_sorted_fwd, _gather_sorted_bwd)


@jax.custom_vjp
def _gather_unsorted(xs, perm, inv):
    return xs[inv]


def _gather_unsorted_fwd(xs, perm, inv):
    return xs[inv], (perm, inv)


def _gather_unsorted_bwd(res, dx):
    perm, inv = res
    real = (jnp.arange(perm.shape[0]) < inv.shape[0]).reshape((-1,) + (1,) * (dx.ndim - 1))
    return jnp.where(real, dx[perm], 0), None, None


_gather_unsorted.defvjp(_gather_unsorted_fwd, _gather_unsorted_bwd)


def sort_rows(x: jax.Array, r: Routing) -> jax.Array:
    """[B, S, ...] in sequence order -> [Np, ...] in modality order (per batch shard)."""
    def local(x, r):
        return _gather_sorted(x.reshape(-1, *x.shape[r.modality.ndim:]), r.perm, r.inv)
    return _per_shard(local, x, r)


def unsort_rows(x: jax.Array, r: Routing) -> jax.Array:
    """[Np, ...] in modality order -> [B, S, ...] in sequence order (padding rows dropped)."""
    def local(x, r):
        return _gather_unsorted(x, r.perm, r.inv).reshape(*r.modality.shape, *x.shape[1:])
    return _per_shard(local, x, r)


# ---- grouped matmul of sorted rows: y[i] = x[i] @ w[groups[i]] ----

def _windows(counts, tile: int, rows: int):
    """[(size, first row [M], trips [M])], largest windows first: modality m's rows
    [start_m, start_m + counts_m) are covered by windows of tile * 2^j rows (the largest
    not above `rows`) as many as fit, then at most one of each smaller size, binary digits
    of the rest, and the smallest (`tile`) rounds up: few loop trips, little overhang."""
    sizes = [tile]
    while sizes[-1] * 2 <= rows:
        sizes.append(sizes[-1] * 2)
    row, done, out = jnp.cumsum(counts) - counts, jnp.zeros_like(counts), []
    for j, size in enumerate(reversed(sizes)):
        rest = counts - done
        trips = rest // size if j < len(sizes) - 1 else (rest + size - 1) // size
        out.append((size, row + done, trips))
        done = done + trips * size
    return out


def _windows_matmul(x, w, counts, tile):
    y = jnp.zeros((x.shape[0], w.shape[2]), x.dtype)
    windows = _windows(counts, tile, x.shape[0] - tile + 1)
    for m in range(w.shape[0]):   # modality order: m + 1 overwrites m's overhang
        for size, first, trips in windows:

            def body(i, y, wm=w[m], first=first[m], size=size):
                row = first + i * size
                xb = jax.lax.dynamic_slice_in_dim(x, row, size, 0)
                return jax.lax.dynamic_update_slice_in_dim(y, jnp.dot(xb, wm), row, 0)

            y = jax.lax.fori_loop(0, trips[m], body, y)
    return y


def _windows_weight_grad(x, dy, counts, tile):
    ends, dws = jnp.cumsum(counts), []
    windows = _windows(counts, tile, x.shape[0] - tile + 1)
    for m in range(counts.shape[0]):
        dw = jnp.zeros((x.shape[1], dy.shape[1]), jnp.float32)
        for size, first, trips in windows:

            def body(i, dw, first=first[m], size=size):
                row = first + i * size
                xb = jax.lax.dynamic_slice_in_dim(x, row, size, 0)
                if size == tile:   # only the smallest windows overhang: mask other rows
                    xb = jnp.where((row + jnp.arange(size) < ends[m])[:, None], xb, 0)
                dyb = jax.lax.dynamic_slice_in_dim(dy, row, size, 0)
                return dw + jnp.dot(xb.T, dyb, preferred_element_type=jnp.float32)

            dw = jax.lax.fori_loop(0, trips[m], body, dw)
        dws.append(dw)
    return jnp.stack(dws)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tiled_matmul(x, w, counts, tile):
    """x [Np, K] sorted by modality (`counts` rows each), w [M, K, F] -> [Np, F]; see the
    module doc. Rows past the last modality's windows hold arbitrary values."""
    return _windows_matmul(x, w, counts, tile)


def _tiled_fwd(x, w, counts, tile):
    return _windows_matmul(x, w, counts, tile), (x, w, counts)


def _tiled_bwd(tile, res, dy):
    x, w, counts = res
    dx = _windows_matmul(dy, jnp.swapaxes(w, 1, 2), counts, tile)
    dw = _windows_weight_grad(x, dy, counts, tile).astype(w.dtype)
    return dx, dw, None


tiled_matmul.defvjp(_tiled_fwd, _tiled_bwd)


def grouped_matmul(x: jax.Array, w: jax.Array, r: Routing, impl: str) -> jax.Array:
    """Sorted rows x [Np, K] times their modality's weight w [M, K, F] -> [Np, F]."""
    if impl not in ("tiled", "ragged"):
        raise ValueError(f"model.mot.matmul={impl!r}: one of {MATMULS}")

    def local(x, w, r):
        r = _local(r)
        if impl == "ragged":
            return jax.lax.ragged_dot(x, w, r.sizes)
        return tiled_matmul(x, w, r.counts, window_rows(r))

    return _per_shard(local, x, w, r, replicated=(1,))


# ---- modules ----

class MoTNorm(nnx.Module):
    """RMSNorm with one scale per modality: scale [M, dim], each row uses its modality's."""

    def __init__(self, num: int, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
        self.scale = param(rngs, nnx.initializers.ones, (num, dim), ("modality", "norm"),
                           param_dtype)
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array, groups: jax.Array) -> jax.Array:
        """x [*G, ..., dim] with `groups` [*G] the modality of each leading index."""
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # A one-hot matmul rather than scale[groups]: its gradient is a matmul too, where a
        # gather's would be a scatter-add (slow on XLA:CPU).
        scale = jax.nn.one_hot(groups, self.scale.shape[0], dtype=jnp.float32) @ \
            self.scale[...].astype(jnp.float32)
        scale = scale.reshape(groups.shape + (1,) * (x.ndim - groups.ndim - 1) + scale.shape[-1:])
        return (x32 * scale).astype(self.dtype)


def _norm_args(cfg, rngs):
    return dict(eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class MoTAttention(Attention):
    """Per-modality q/k/v/o (and QK-norm); the attention itself is `Attention.mix`."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):  # noqa: super().__init__ would build dense weights
        num, d, h, kvh = cfg.mot.num_modalities, cfg.d_model, cfg.n_heads, cfg.n_kv_heads
        hd, pdt = cfg.head_dim, jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.init_std)
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        kv_names = ("modality", "embed", "kv_heads", "head_dim")
        self.q = param(rngs, init, (num, d, h, hd), ("modality", "embed", "heads", "head_dim"), pdt)
        self.k = param(rngs, init, (num, d, kvh, hd), kv_names, pdt)
        self.v = param(rngs, init, (num, d, kvh, hd), kv_names, pdt)
        self.o = param(rngs, out_init, (num, h, hd, d), ("modality", "heads", "head_dim", "embed"),
                       pdt)
        if cfg.qk_norm:
            self.q_norm = MoTNorm(num, hd, **_norm_args(cfg, rngs))
            self.k_norm = MoTNorm(num, hd, **_norm_args(cfg, rngs))
        else:
            self.q_norm = self.k_norm = None
        self.rope_theta = cfg.rope_theta
        self.dtype = jnp.dtype(cfg.dtype)
        self.kernel = attention.implementation(cfg)
        self.matmul = resolve_matmul(cfg.mot.matmul)

    def __call__(self, xs, r: Routing, positions, visible, cache=None):
        """xs [Np, E] (normed, modality order) -> (out [Np, E] modality order, (k, v));
        `visible` (attention.Visible) and `cache` as in `Attention.__call__`."""
        dt, num, e = self.dtype, self.q.shape[0], self.q.shape[1]
        h, kvh, hd = self.q.shape[2], self.k.shape[2], self.q.shape[3]
        w = jnp.concatenate([p[...].astype(dt).reshape(num, e, -1)
                             for p in (self.q, self.k, self.v)], axis=-1)
        qkv = unsort_rows(grouped_matmul(xs, w, r, self.matmul), r)  # one gather for q, k, v
        b, s = r.modality.shape
        q, k, v = jnp.split(qkv, [h * hd, (h + kvh) * hd], axis=-1)
        q, k, v = q.reshape(b, s, h, hd), k.reshape(b, s, kvh, hd), v.reshape(b, s, kvh, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q, r.modality), self.k_norm(k, r.modality)
        out, kv = self.mix(q, k, v, positions, visible, cache)
        out = sort_rows(out.reshape(b, s, h * hd), r)
        wo = self.o[...].astype(dt).reshape(num, h * hd, e)
        return grouped_matmul(out, wo, r, self.matmul), kv


class MoTMLP(nnx.Module):
    """Per-modality SwiGLU; gate and up run as one grouped matmul."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        num, d, m = cfg.mot.num_modalities, cfg.d_model, cfg.mlp_dim
        pdt = jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.init_std)
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        self.gate = param(rngs, init, (num, d, m), ("modality", "embed", "mlp"), pdt)
        self.up = param(rngs, init, (num, d, m), ("modality", "embed", "mlp"), pdt)
        self.down = param(rngs, out_init, (num, m, d), ("modality", "mlp", "embed"), pdt)
        self.dtype = jnp.dtype(cfg.dtype)
        self.matmul = resolve_matmul(cfg.mot.matmul)

    def __call__(self, xs: jax.Array, r: Routing) -> jax.Array:
        dt = self.dtype
        w = jnp.concatenate([self.gate[...].astype(dt), self.up[...].astype(dt)], axis=-1)
        gate, up = jnp.split(grouped_matmul(xs, w, r, self.matmul), 2, axis=-1)
        return grouped_matmul(jax.nn.silu(gate) * up, self.down[...].astype(dt), r, self.matmul)


class MoTBlock(nnx.Module):
    """`transformer.Block` with per-modality weights, routed by `ctx.routing`: the residual
    stream `xs` [Np, E] stays in modality order from the embedding to the final norm."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        num = cfg.mot.num_modalities
        self.attn_norm = MoTNorm(num, cfg.d_model, **_norm_args(cfg, rngs))
        self.attn = MoTAttention(cfg, rngs=rngs)
        self.mlp_norm = MoTNorm(num, cfg.d_model, **_norm_args(cfg, rngs))
        self.mlp = MoTMLP(cfg, rngs=rngs)

    def __call__(self, xs, ctx: Context, cache=None):
        r = ctx.routing
        h, kv = self.attn(self.attn_norm(xs, r.groups), r, ctx.positions, ctx.visible, cache)
        xs = xs + h
        xs = xs + self.mlp(self.mlp_norm(xs, r.groups), r)
        return xs, kv
