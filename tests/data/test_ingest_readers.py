"""The streamed readers (mmar/data/ingest): WebDataset tar shards, Hugging Face Parquet and
OBELICS documents, written here with tarfile / pyarrow / PIL, read back exactly; every kind
of bad record skipped and counted with its place."""
import gzip
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmar.data import stories
from mmar.data.ingest import example, obelics, parquet, records, shards, stream, webdataset
from mmar.data.packing import BadDataError
from mmar.data.synthetic import ShapesSpec, make_examples

OPTS = records.Options(image_size=64)   # the generated images' size: PNG decodes exactly


def split(out):
    out = list(out)
    items = [x for x in out if isinstance(x, records.Item)]
    bad = [x for x in out if isinstance(x, records.Bad)]
    return items, bad


def decode(item):
    return [records.decode_image(d, 64) for d in item.images]


def test_webdataset_shards_as_img2dataset_writes_them(tmp_path):
    paths = example.write_webdataset(tmp_path, records=5, files=2, fmt="png")
    want = list(make_examples(ShapesSpec(image_size=64, seed=0), "train", 10))
    got = []
    for p in stream.list_inputs(str(tmp_path / "*.tar")):
        items, bad = split(webdataset.read(p, OPTS))
        assert bad == []
        got += items
    assert [p for p in paths] == sorted(paths) and len(got) == 10
    for item, ex in zip(got, want):   # .txt for odd keys, the .json caption for even ones
        assert item.segments == [{"text": ex["caption"]}, {"image": 0}]
        np.testing.assert_array_equal(decode(item)[0], ex["image"])
    assert got[0].where == f"{paths[0]}:000000000" and got[7].where == f"{paths[1]}:000010002"


def test_webdataset_caption_field_and_gzip(tmp_path):
    image = example.encode(np.full((8, 8, 3), 200, np.uint8), "png")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        for name, data in (("dir/k1.png", image), ("dir/k1.json", b'{"alt": "grey"}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    opts = records.Options(image_size=8, caption_field="alt")
    items, bad = split(webdataset.read(tmp_path / "a.tar.gz", opts))
    assert bad == [] and items[0].segments[0] == {"text": "grey"}
    assert items[0].where.endswith("a.tar.gz:dir/k1")
    _, bad = split(webdataset.read(tmp_path / "a.tar.gz", records.Options(image_size=8)))
    assert [b.kind for b in bad] == ["missing_caption"]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_webdataset_long_names_directories_and_links(tmp_path, fmt):
    """Long member names (PAX records, GNU long-name members, ustar prefixes), directories
    and links between samples: the block reader sees what tarfile sees."""
    image = example.encode(np.full((8, 8, 3), 9, np.uint8), "png")
    folder = "d" * 60 + "/" + "e" * 60          # > 100 characters with the file name
    def member(name, kind, linkname=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        return info

    with tarfile.open(tmp_path / "x.tar", "w", format=fmt) as tf:
        tf.addfile(member(folder, tarfile.DIRTYPE))
        for k in ("k1", "k2"):
            for ext, data in (("png", image), ("txt", f"caption {k}".encode())):
                info = tarfile.TarInfo(f"{folder}/{k}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            tf.addfile(member(f"{folder}/{k}.lnk", tarfile.SYMTYPE, "elsewhere"))
    items, bad = split(webdataset.read(tmp_path / "x.tar", records.Options(image_size=8)))
    assert bad == []
    assert [i.where.split(":", 1)[1] for i in items] == [f"{folder}/k1", f"{folder}/k2"]
    assert [i.segments[0]["text"] for i in items] == ["caption k1", "caption k2"]


def test_parquet_in_the_hugging_face_layout(tmp_path):
    example.write_parquet(tmp_path, records=20, files=1, row_group=8)
    want = list(make_examples(ShapesSpec(image_size=64, seed=1), "train", 20))
    items, bad = split(parquet.read(tmp_path / "train-00000.parquet", OPTS))
    assert bad == [] and len(items) == 20
    for i, (item, ex) in enumerate(zip(items, want)):
        assert item.where.endswith(f"train-00000.parquet:row {i}")
        assert item.segments[0] == {"text": ex["caption"]}
        np.testing.assert_array_equal(decode(item)[0], ex["image"])


def test_parquet_column_names_binary_images_and_paths(tmp_path):
    """Other column names by config; an image column of plain bytes; a {bytes, path} struct
    whose bytes are empty reads the path, relative to the file's folder, never outside."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    png = example.encode(np.full((64, 64, 3), 7, np.uint8), "png")
    (data / "img" / "a.png").write_bytes(png)
    (tmp_path / "outside" / "x.png").write_bytes(png)
    os.symlink(tmp_path / "outside" / "x.png", data / "img" / "link.png")
    cells = [{"bytes": png, "path": None}, {"bytes": None, "path": "img/a.png"},
             {"bytes": None, "path": "../outside/x.png"},
             {"bytes": None, "path": str(tmp_path / "outside" / "x.png")},
             {"bytes": None, "path": "img/link.png"}, {"bytes": None, "path": "img/nope.png"}]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"jpg": pa.array(cells, image_type),
                             "caption_en": [f"c{i}" for i in range(6)]}), data / "s.parquet")
    opts = records.Options(image_size=64, image_column="jpg", text_column="caption_en")
    items, bad = split(parquet.read(data / "s.parquet", opts))
    assert [i.segments[0]["text"] for i in items] == ["c0", "c1"]
    np.testing.assert_array_equal(decode(items[1])[0], np.full((64, 64, 3), 7, np.uint8))
    assert [(b.where.split(":")[-1], b.kind) for b in bad] == [
        ("row 2", "path_outside"), ("row 3", "path_outside"), ("row 4", "path_outside"),
        ("row 5", "missing_image")]
    # plain binary images, and the default column names missing: every row counted
    pq.write_table(pa.table({"image": pa.array([png, b""], pa.binary()), "text": ["x", "y"]}),
                   data / "b.parquet")
    items, bad = split(parquet.read(data / "b.parquet", OPTS))
    assert len(items) == 1 and [b.kind for b in bad] == ["missing_image"]
    items, bad = split(parquet.read(data / "s.parquet", OPTS))
    assert items == [] and bad[0].kind == "missing_column" and bad[0].count == 6
    assert "no column 'image'" in bad[0].why


def test_obelics_interleaved_documents(tmp_path):
    example.write_obelics(tmp_path, records=4, files=1)
    want = list(stories.make_stories(ShapesSpec(image_size=64, seed=2), 4, seed=2))
    items, bad = split(obelics.read(tmp_path / "docs-00000.parquet", OPTS))
    assert bad == [] and len(items) == 4
    for item, story in zip(items, want):
        assert item.kind == "document" and item.segments == story["segments"]
        for got, ref in zip(decode(item), story["images"]):
            np.testing.assert_array_equal(got, ref)


def test_every_kind_of_bad_record_is_counted_with_its_place(tmp_path):
    paths = example.write_all(tmp_path, records=6, files=1, bad=True)
    tar = paths["webdataset"][0]
    data = open(tar, "rb").read()
    with tarfile.open(tar) as tf:
        third, fourth = tf.getmembers()[2:4]   # 000000001.jpg, 000000001.txt
    hurt = bytearray(data)
    hurt[fourth.offset:fourth.offset + 100] = b"\xff" * 100       # a damaged member header
    (tmp_path / "hurt.tar").write_bytes(bytes(hurt))
    (tmp_path / "cut.tar").write_bytes(data[:third.offset + 700])   # ends inside a member
    (tmp_path / "short.tar").write_bytes(data[:fourth.offset])      # ends between members
    pq_path = paths["parquet"][0]
    col = pq.ParquetFile(pq_path).metadata.row_group(0).column(0)
    raw = bytearray(open(pq_path, "rb").read())
    raw[col.data_page_offset + 8:col.data_page_offset + 48] = b"\xff" * 40
    (tmp_path / "hurt.parquet").write_bytes(bytes(raw))

    def tally(kind, path):
        t = records.Tally()
        list(stream.documents(str(path), kind, lambda x: np.zeros((len(x), 1)), OPTS, t,
                              batch_size=4, log=lambda m: None))
        return t

    t = tally("webdataset", tar)
    assert dict(t.bad) == {k: 1 for k in example.BAD["webdataset"]} and t.kept == 6
    assert f"{tar}:000009990: no .txt or .json member" in t.examples
    t = tally("parquet", pq_path)
    assert dict(t.bad) == {k: 1 for k in example.BAD["parquet"]} and t.kept == 6
    assert any(e.startswith(f"{pq_path}:row 1: ") for e in t.examples)
    t = tally("obelics", paths["obelics"][0])
    assert dict(t.bad) == {k: 1 for k in example.BAD["obelics"]}
    hurt_t = tally("webdataset", tmp_path / "hurt.tar")
    assert hurt_t.bad["unreadable_file"] == 1 and hurt_t.kept >= 4
    assert "unreadable tar member header(s) at bytes" in hurt_t.examples[0]
    for cut, why in (("cut.tar", "unexpected end of data"), ("short.tar", "without its "
                                                                "end-of-archive blocks")):
        cut_t = tally("webdataset", tmp_path / cut)
        assert cut_t.bad["unreadable_file"] == 1 and cut_t.kept == 1, cut
        assert any(why in e for e in cut_t.examples), cut_t.examples
    with gzip.open(tmp_path / "cut.tar.gz", "wb") as f:     # the tarfile path, compressed
        f.write(data[:third.offset + 700])
    cut_t = tally("webdataset", tmp_path / "cut.tar.gz")
    assert cut_t.bad["unreadable_file"] == 1 and cut_t.kept == 1
    t = tally("parquet", tmp_path / "hurt.parquet")   # row group 0 (rows 0-7) unreadable
    assert t.bad["unreadable_file"] == 8 and t.kept == 0 and t.seen == 8
    assert f"{tmp_path}/hurt.parquet:row group 0 (rows 0-7): unreadable row group" in \
        t.examples[0]


def test_text_rules(tmp_path):
    """Invalid UTF-8 (binary text column), a non-text caption type, empty and oversized
    documents: counted by kind, never replaced or passed on silently."""
    png = example.encode(np.zeros((64, 64, 3), np.uint8), "png")
    pq.write_table(pa.table({"image": pa.array([png] * 4, pa.binary()),
                             "text": pa.array([b"ok", b"caf\xe9", b"  ", b"x" * 100],
                                              pa.binary())}), tmp_path / "t.parquet")
    _, bad = split(parquet.read(tmp_path / "t.parquet",
                                records.Options(image_size=64, max_text_bytes=50)))
    assert [b.kind for b in bad] == ["bad_utf8", "empty", "oversized"]
    pq.write_table(pa.table({"image": pa.array([png], pa.binary()), "text": [3]}),
                   tmp_path / "n.parquet")
    _, bad = split(parquet.read(tmp_path / "n.parquet", OPTS))
    assert [b.kind for b in bad] == ["wrong_type"]


def test_max_bad_fraction_names_the_worst_file(tmp_path):
    example.write_webdataset(tmp_path / "a", records=20, files=1)
    example.write_webdataset(tmp_path / "b", records=2, files=1, bad=True, seed=3)
    os.rename(tmp_path / "b/shard-00000.tar", tmp_path / "a/shard-00001.tar")
    name = f"webdataset:{tmp_path}/a/*.tar"
    enc = lambda x: np.zeros((len(x), 1), np.int32)
    with pytest.raises(BadDataError) as e:
        shards.encode_source(name, enc, OPTS, max_bad_fraction=0.1, batch_size=8,
                             log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith(f"{name}: 4 of 26 records bad, more than data.max_bad_fraction=0.1")
    assert f"worst file: {tmp_path}/a/shard-00001.tar (4 of 6 bad" in msg and "\n" not in msg
    out = shards.encode_source(name, enc, OPTS, max_bad_fraction=0.2, batch_size=8,
                               log=lambda m: None)
    assert len(out) == 22 and out[0]["codes"].shape == (1, 1)
    assert json.loads(json.dumps(out[0]["segments"])) == out[0]["segments"]
