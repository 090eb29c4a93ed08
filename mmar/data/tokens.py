"""Token shards on disk: record format, metadata, the tokenizer check, and the reader.

`mmar pretokenize` (mmar/jobs/pretokenize.py; the writer is mmar/data/pretokenize.py) writes,
per source and split (the run directory's layout: mmar/rundir.py):

    WORKDIR/tokens/<source>/metadata.json        which tokenizer made the shards, the layout
    WORKDIR/tokens/<source>/<split>/process_{i}-of-{n}-shard_{k}.array_record
    WORKDIR/tokens/<source>/<split>/process_{i}-of-{n}-shard_{k}.array_record.done

A record is one document, serialized without pickle:

    b"MMTK" | header length (uint32, little-endian) | header (UTF-8 JSON) | codes (int32 LE)
    header = {"index": the record's index in the split, "kind": "caption" | "document",
              "segments": [{"text": str} | {"image": k}, ...], "codes_shape": [k, n]}
    keep-aspect (`data.keep_aspect`): "codes_shape": [total], "grids": [[h, w], ...], the
    images' codes one after the other (each h * w)

Images are stored as the tokenizer's codes (0..num_codes-1, not vocabulary ids: the pipeline
adds the image offset), text as text: the byte/SentencePiece tokenizer is cheap and runs at
train time, so caption dropout, the image-to-text flip and packing stay training-time choices
exactly as with codes kept in memory. A `.done` file (JSON: records, bytes, sha256) marks a
finished shard; a shard without one is rewritten on resume.

Why the check: codes are only meaningful to the tokenizer that made them. Training on shards
from another checkpoint or quantizer would run without any error and learn garbage, so
`check_tokenizer` compares the shards' metadata with the run's tokenizer (the config fields
that change codes, by their schema names, so metadata written with the older flat names is
read too; the checkpoint's step and content hash) and raises one `TokensError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import grain
import numpy as np

from mmar import config as config_lib
from mmar import derived, schema
from mmar.errors import UserError

MAGIC = b"MMTK"
FORMAT = "mmar-tokens/1"
# image_tokenizer fields that change which code an image gets: the autoencoder's shape and
# the quantizer with its own options (image_tokenizer.<quantizer>.*). Training-only fields
# such as train.steps or lr do not: the checkpoint hash covers what training produced.
SHAPE_FIELDS = ("quantizer", "downsample", "arch", "channels", "channel_mult",
                "num_res_blocks", "norm")
QUANTIZER_FIELDS = {"fsq": ("levels", "groups"), "vq": ("codebook_size", "codebook_dim", "l2_norm"),
                    "lfq": ("bits",), "rq": ("depth", "shared", "codebook_size",
                                             "codebook_dim")}
# data fields that define which images a built-in source holds (shapes, stories).
SOURCE_FIELDS = ("image_size", "grid", "max_objects", "jitter", "seed", "colors", "shapes",
                 "heldout_combos", "num_train", "num_test", "num_unseen")


class TokensError(UserError, ValueError):
    """Token shards that do not fit this run (other tokenizer, incomplete, missing)."""


# ---- records -------------------------------------------------------------------------------

def encode_record(index: int, kind: str, segments, codes, grids=None) -> bytes:
    """`codes` [k, n], or with `grids` ([h, w] per image) k flat arrays of h * w codes."""
    extra = {}
    if grids is not None:
        grids = [[int(h), int(w)] for h, w in grids]
        if len(grids) != len(codes) or any(np.size(c) != h * w
                                           for c, (h, w) in zip(codes, grids)):
            raise ValueError(f"record {index}: {len(codes)} images' codes do not match "
                             f"their grids {grids}")
        codes, extra = np.concatenate([np.reshape(c, -1) for c in codes] or [[]]), {
            "grids": grids}
    codes = np.ascontiguousarray(codes, dtype="<i4")
    if grids is None and codes.ndim != 2:
        codes = codes.reshape(len(codes), -1) if codes.size else codes.reshape(0, 0)
    header = json.dumps({"index": int(index), "kind": kind, "segments": segments,
                         "codes_shape": list(codes.shape), **extra},
                        separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + codes.tobytes()


def decode_record(data: bytes) -> dict:
    """-> {"index", "kind", "segments", "codes": int32 [k, n]}, keep-aspect records with
    "grids" and "codes" a list of k flat arrays; ValueError if not a record."""
    if data[:4] != MAGIC:
        raise ValueError(f"not an mmar token record (starts with {data[:4]!r})")
    (n,) = struct.unpack("<I", data[4:8])
    rec = json.loads(data[8:8 + n].decode())
    shape = rec.pop("codes_shape")
    rec["codes"] = np.frombuffer(data[8 + n:], "<i4").astype(np.int32).reshape(shape)
    if "grids" in rec:
        ends = np.cumsum([h * w for h, w in rec["grids"]])
        if not len(ends) or ends[-1] != rec["codes"].size:
            raise ValueError(f"grids {rec['grids']} do not hold {rec['codes'].size} codes")
        rec["codes"] = np.split(rec["codes"], ends[:-1])
    return rec


# ---- layout --------------------------------------------------------------------------------

def source_key(name: str) -> str:
    """The directory name of a mixture entry: built-in names as is, a folder by its name,
    a streamed `kind:GLOB` as kind-<last plain folder>-<hash of the GLOB>."""
    stream = derived.stream_source(name)
    if stream is not None:
        kind, pattern = stream
        folders = [p for p in pattern.split("/")[:-1]
                   if p and p != ".." and not any(c in p for c in "*?[:")]
        tag = hashlib.sha256(pattern.encode()).hexdigest()[:8]
        return "-".join([kind, *folders[-1:], tag])
    return os.path.basename(os.path.normpath(name)) or name


def shard_name(process_index: int, process_count: int, shard: int) -> str:
    return f"process_{process_index}-of-{process_count}-shard_{shard}.array_record"


def plan(num_records: int, process_count: int, shard_records: int) -> list[dict]:
    """Every shard of a split: its file name and which records (global indices) it holds.

    Process i takes records i, i+n, i+2n, ... (Grain's per-process slice); its k-th shard
    holds that slice's records [k*S, (k+1)*S). Depends on (N, n, S) only, so every process
    computes the same plan and a resumed run rewrites exactly the shards it lost.
    """
    shards = []
    for p in range(process_count):
        n_slice = len(range(p, num_records, process_count))
        for k, start in enumerate(range(0, n_slice, shard_records)):
            stop = min(start + shard_records, n_slice)
            shards.append({"file": shard_name(p, process_count, k), "process": p, "shard": k,
                           "first": p + start * process_count, "step": process_count,
                           "records": stop - start})
    return shards


def shard_indices(shard: dict) -> range:
    return range(shard["first"], shard["first"] + shard["records"] * shard["step"],
                 shard["step"])


# ---- which tokenizer -----------------------------------------------------------------------

def _jsonable(x):
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def params_sha256(params_dir: str) -> str:
    """sha256 over a checkpoint's param files, in sorted relative-path order (names too)."""
    h = hashlib.sha256()
    files = sorted(os.path.relpath(os.path.join(d, f), params_dir)
                   for d, _, fs in os.walk(params_dir) for f in fs)
    if not files:
        raise TokensError(f"no param files in {params_dir}")
    for rel in files:
        h.update(rel.encode() + b"\0")
        with open(os.path.join(params_dir, rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def tokenizer_identity(cfg, params_dir, step: int) -> dict:
    """What made (or would make) the codes: config, checkpoint step and the hash of its
    param files in `params_dir`, vocab layout (a run directory's: mmar/rundir.py)."""
    tok = cfg.image_tokenizer
    vocab = config_lib.make_vocab(cfg)
    return {"config": _jsonable(tok), "step": int(step),
            "params_sha256": params_sha256(os.fspath(params_dir)),
            "num_codes": derived.num_image_codes(tok),
            "depth": derived.quantizer_depth(tok),
            "image_size": cfg.data.image_size,
            "vocab": {"text_size": vocab.text_size, "image_offset": vocab.image_offset,
                      "num_image_codes": vocab.num_image_codes, "size": vocab.size}}


def source_settings(name: str, data_cfg) -> dict:
    """The data fields that define a source's images (all of them for generated sources)."""
    if name in ("shapes", "stories"):
        return {k: _jsonable(data_cfg[k]) for k in SOURCE_FIELDS}
    if derived.stream_source(name) is not None:   # streamed (mmar/data/ingest)
        keep = ("caption_field", "image_column", "text_column", "texts_column",
                "images_column", "max_images", "max_text_bytes")
        return {"image_size": data_cfg.image_size, **_aspect(data_cfg),
                **{f"ingest.{k}": _jsonable(data_cfg.ingest[k]) for k in keep}}
    return {"image_size": data_cfg.image_size}


def _aspect(data_cfg) -> dict:
    """The keep-aspect fields, only when on (metadata from before them reads as square)."""
    if not data_cfg.keep_aspect:
        return {}
    return {"keep_aspect": True, "max_aspect_ratio": float(data_cfg.max_aspect_ratio)}


def code_settings(tok_config: dict, where: str = "") -> dict:
    """{dotted field: value} of the `image_tokenizer` settings that decide the codes (the
    shape fields, then the quantizer's own: `fsq.levels`, ...), read from a recorded config.
    Metadata written with the older flat names (`levels`, `codebook_size`, `rq_depth`, ...)
    reads the same: `schema.complete` moves them to their place and fills the defaults they
    stood for. A config it cannot read is a TokensError."""
    try:
        tok = schema.complete(tok_config, section="image_tokenizer").to_dict()
    except schema.ConfigError as e:
        raise TokensError(f"{where}: the shards' tokenizer config is not one this mmar reads "
                          f"({e}); rerun `mmar pretokenize` (or delete the directory)") from e
    out = {key: _jsonable(tok[key]) for key in SHAPE_FIELDS}
    name = tok["quantizer"]
    for key in QUANTIZER_FIELDS.get(name, ()):
        out[f"{name}.{key}"] = _jsonable(tok[name][key])
    return out


BYTES_IDENTITY = {"kind": "bytes", "size": 256}   # mmar.vocab.ByteTokenizer().identity()


def _describe(text_identity: dict) -> str:
    sha = text_identity.get("sha256")
    return (f"{text_identity.get('kind')!r} ({text_identity.get('size')} ids"
            + (f", tokenizer.json sha256 {sha[:12]}..)" if sha else ")"))


def check_tokenizer(meta: dict, identity: dict, settings: dict, where: str) -> None:
    """One TokensError naming the first field where the shards and this run disagree."""
    made = meta["tokenizer"]
    hint = "; rerun `mmar pretokenize` (or delete the directory)"
    ours = code_settings(identity["config"], where)
    theirs = code_settings(made["config"], where)
    for key, b in ours.items():   # "quantizer" first: the other quantizer's fields differ
        a = theirs.get(key)
        if a != b:
            raise TokensError(f"{where}: made with image_tokenizer.{key}={a!r}, this run has "
                              f"image_tokenizer.{key}={b!r}{hint}")
    # Not the vocab layout (recorded for reference): shards hold raw codes and text. The text
    # tokenizer is compared all the same (below): shards are one run's prepared data, and
    # a run whose text tokenizer differs is reading another run's (metadata from before
    # text tokenizers were recorded: the byte tokenizer, the only one then).
    for key in ("num_codes", "depth", "image_size"):
        if made[key] != identity[key]:
            raise TokensError(f"{where}: made with {key}={made[key]!r}, this run has "
                              f"{identity[key]!r}{hint}")
    text = identity.get("text_tokenizer")
    text_made = made.get("text_tokenizer", BYTES_IDENTITY)
    if text is not None and text != text_made:
        raise TokensError(f"{where}: made for the text tokenizer {_describe(text_made)}, this "
                          f"run's is {_describe(text)} (vocab.text_tokenizer){hint}")
    for key, value in settings.items():
        if meta["source_settings"].get(key) != value:
            raise TokensError(f"{where}: made from data.{key}="
                              f"{meta['source_settings'].get(key)!r}, this run has "
                              f"data.{key}={value!r}{hint}")
    if made["params_sha256"] != identity["params_sha256"]:
        raise TokensError(
            f"{where}: made by tokenizer checkpoint sha256 {made['params_sha256'][:12]}.. "
            f"(step {made['step']}), this run's tokenizer is "
            f"{identity['params_sha256'][:12]}.. (step {identity['step']}){hint}")


def read_metadata(source_dir: str) -> dict:
    path = os.path.join(source_dir, "metadata.json")
    if not os.path.isfile(path):
        raise TokensError(f"{path}: no token shards; run `mmar pretokenize` with this "
                          "--config and --workdir first")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise TokensError(f"{path}: unreadable ({type(e).__name__}: {e}); it records which "
                          f"tokenizer made the shards beside it: delete {source_dir} and rerun "
                          "`mmar pretokenize`") from None
    if meta.get("format") != FORMAT:
        raise TokensError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


# ---- reading -------------------------------------------------------------------------------

class TokenShardSource(grain.sources.RandomAccessDataSource):
    """One split's shards as a Grain random-access source, records in the split's order.

    Built on Grain's `ArrayRecordDataSource` over the shard files; an index map puts record
    i at position i whatever process count wrote the shards, so each training process takes
    its own slice (`i::n`) and a shuffle gives the same stream as the in-memory codes.
    Pickles as paths (Grain workers reopen the files).
    """

    def __init__(self, split_dir: str, shards: list[dict]):
        self.split_dir = os.fspath(split_dir)
        self.paths = [os.path.join(self.split_dir, s["file"]) for s in shards]
        # concatenated position -> shard: the first position of each (error messages)
        self.starts = np.cumsum([0] + [s["records"] for s in shards])[:-1]
        total = sum(s["records"] for s in shards)
        self.position = np.empty(total, np.int64)   # record index -> concatenated position
        # Streamed shards (mmar/data/ingest) number their records from 0 in each shard:
        # the header index of record i is i - base[i]; 0 for the index plan above.
        self.base = None
        pos = 0
        for s in shards:
            self.position[np.asarray(shard_indices(s))] = np.arange(pos, pos + s["records"])
            if s.get("local"):
                if self.base is None:
                    self.base = np.zeros(total, np.int64)
                self.base[pos:pos + s["records"]] = s["first"]
            pos += s["records"]
        self._source = None

    def _open(self):
        if self._source is None:
            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        return self._source

    def __len__(self):
        return len(self.position)

    def __getitem__(self, i):
        pos = int(self.position[int(i)])
        try:
            rec = decode_record(self._open()[pos])
        except Exception as e:   # noqa: BLE001: the reader's errors name no file
            shard = int(np.searchsorted(self.starts, pos, side="right")) - 1
            raise TokensError(
                f"{self._damaged(shard)}: unreadable at record {i} ({type(e).__name__}: {e}); "
                "the shard was damaged after it was written: delete it and its .done, then "
                "rerun `mmar pretokenize` with the same --config and --workdir (it rewrites "
                "only that shard)") from None
        if rec["index"] != int(i) - (0 if self.base is None else int(self.base[int(i)])):
            raise TokensError(f"{self.split_dir}: record {i} holds index {rec['index']}")
        return rec

    def _damaged(self, shard: int) -> str:
        """The shard file that fails to read: the reader opens all of them together, so the
        record's own shard is tried first, then each of the others alone."""
        for k in [shard] + [k for k in range(len(self.paths)) if k != shard]:
            try:
                one = grain.sources.ArrayRecordDataSource([self.paths[k]])
                decode_record(one[0])
                if len(one) > 1:
                    decode_record(one[len(one) - 1])
            except Exception:   # noqa: BLE001
                return self.paths[k]
        return self.paths[shard]

    def __getstate__(self):
        return {**self.__dict__, "_source": None}


class CaptionView(grain.sources.RandomAccessDataSource):
    """Caption-pair records as {"caption", "codes" [n]}: what `CaptionCodeSource` yields."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        rec = self.source[i]
        out = {"caption": rec["segments"][0]["text"], "codes": rec["codes"][0]}
        if "grids" in rec:
            out["grid"] = rec["grids"][0]
        return out


def open_split(tokens_dir, name: str, split: str, *, identity: dict | None = None,
               data_cfg=None) -> TokenShardSource:
    """The shards of `name`/`split` under `tokens_dir`, checked against this run's tokenizer.

    Raises TokensError when the metadata disagrees with `identity` or a shard is unfinished.
    """
    source_dir = os.path.join(os.fspath(tokens_dir), source_key(name))
    meta = read_metadata(source_dir)
    where = os.path.join(source_dir, "metadata.json")
    if identity is not None:
        check_tokenizer(meta, identity, source_settings(name, data_cfg) if data_cfg else {},
                        where)
    if split not in meta["splits"]:
        raise TokensError(f"{where}: no split {split!r} (has {sorted(meta['splits'])}); run "
                          "`mmar pretokenize`")
    layout = meta["splits"][split]
    split_dir = os.path.join(source_dir, split)
    if layout.get("streamed"):
        files = sorted(layout["shards"])
    else:
        shards = plan(layout["num_records"], layout["process_count"], layout["shard_records"])
        files = [s["file"] for s in shards]
    missing = [f for f in files if not os.path.isfile(os.path.join(split_dir, f + ".done"))]
    if missing:
        raise TokensError(f"{split_dir}: {len(missing)} of {len(files)} shards unfinished "
                          f"(first: {missing[0]}); rerun `mmar pretokenize` to finish them")
    dones = {f: read_done(os.path.join(split_dir, f)) for f in files}
    for f, done in dones.items():   # cheap: a damaged or replaced shard rarely keeps its size
        path = os.path.join(split_dir, f)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size != done.get("bytes"):
            raise TokensError(
                f"{path}: {'missing' if size is None else f'{size:,} bytes'}, its .done "
                f"marker says {done.get('bytes', 0):,}: damaged after it was written; rerun "
                "`mmar pretokenize` with the same --config and --workdir (it rewrites only "
                "that shard)")
    if layout.get("streamed"):
        shards, first = [], 0
        for f in files:   # one per input file, in input order; empty ones left out
            n = dones[f]["records"]
            if n:
                shards.append({"file": f, "first": first, "step": 1, "records": n,
                               "local": True})
            first += n
    return TokenShardSource(split_dir, shards)


def read_done(shard_path: str) -> dict:
    """A finished shard's `.done` marker (records, bytes, sha256; streamed: the tally);
    TokensError naming it when it cannot be read."""
    path = shard_path + ".done"
    try:
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
        if not isinstance(done, dict) or not isinstance(done.get("records"), int):
            raise ValueError("no record count")
    except (OSError, ValueError) as e:
        raise TokensError(f"{path}: unreadable ({type(e).__name__}: {e}); delete it and rerun "
                          "`mmar pretokenize` with the same --config and --workdir (it "
                          "rewrites that shard)") from None
    return done
