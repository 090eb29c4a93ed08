"""A user's folder (mmar/data/builders/folder.py): image paths that leave the folder are
refused unopened, a byte-order mark does not cost the first line, invalid UTF-8 is counted
instead of replaced, and the builder streams its records instead of holding them all."""
import codecs
import json
import os
import weakref

import numpy as np
import PIL.Image
import pytest

from mmar.data.builders import folder


def write_folder(root, lines, n_images=2, name="captions.jsonl", raw=None):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        PIL.Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / f"img{i}.png")
    data = raw if raw is not None else "".join(json.dumps(x) + "\n" for x in lines).encode()
    (root / name).write_bytes(data)
    return root


def scan(root, **kw):
    logs = []
    report = folder.scan(folder.FolderSpec(str(root), max_bad_fraction=1.0, **kw),
                         log=logs.append)
    return report, logs


def test_image_paths_that_leave_the_folder_are_refused_unopened(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(outside / "x.png")
    root = tmp_path / "data"
    root.mkdir()
    os.symlink(outside / "x.png", root / "link_out.png")
    os.symlink(outside, root / "dir_out")
    lines = [{"image": "img0.png", "caption": "inside"},
             {"image": "../outside/x.png", "caption": "climbs out"},
             {"image": "/etc/hostname", "caption": "absolute"},
             {"image": str(outside / "x.png"), "caption": "absolute, an image"},
             {"image": "link_out.png", "caption": "a link out"},
             {"image": "dir_out/x.png", "caption": "through a linked folder"},
             {"segments": [{"text": "a story"}, {"image": "sub/../img1.png"},
                           {"image": "../outside/x.png"}]}]
    write_folder(root, lines)
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: (opened.append(str(fp)),
                                                                 real_open(fp, *a, **k))[1])
    report, logs = scan(root)
    assert [r["id"] for r in report.records] == ["captions.jsonl:1"]
    assert dict(report.bad) == {"path_outside": 6}
    assert "[data] skipped captions.jsonl:2: image path '../outside/x.png' leaves the data " \
           "folder" in "\n".join(logs)
    assert "[data] skipped captions.jsonl:3: image path '/etc/hostname' is absolute" in \
        "\n".join(logs)
    assert not any("outside" in p or "hostname" in p for p in opened), opened


def test_byte_order_mark_keeps_the_first_line(tmp_path):
    lines = [{"image": "img0.png", "caption": "first"}, {"image": "img1.png",
                                                         "caption": "second"}]
    raw = codecs.BOM_UTF8 + "".join(json.dumps(x) + "\n" for x in lines).encode()
    report, _ = scan(write_folder(tmp_path / "d", lines, raw=raw))
    assert [r["id"] for r in report.records] == ["captions.jsonl:1", "captions.jsonl:2"]
    assert json.loads(report.records[0]["segments"])[0] == {"text": "first"}
    assert not report.bad


def test_invalid_utf8_in_a_caption_is_counted_not_replaced(tmp_path):
    good = json.dumps({"image": "img0.png", "caption": "café"}).encode()
    bad = b'{"image": "img1.png", "caption": "caf\xe9 au lait"}'
    report, logs = scan(write_folder(tmp_path / "d", [], raw=good + b"\n" + bad + b"\n"))
    assert [r["id"] for r in report.records] == ["captions.jsonl:1"]
    assert json.loads(report.records[0]["segments"])[0] == {"text": "café"}
    assert dict(report.bad) == {"bad_utf8": 1} and report.lines == 2
    assert "[data] skipped captions.jsonl:2: not valid UTF-8 (invalid continuation byte at " \
           "byte 37)" in logs
    assert "\ufffd" not in json.dumps([r["segments"] for r in report.records])


def test_the_builder_streams_its_records(tmp_path, monkeypatch):
    """prepare() decodes an image, hands it to the writer and lets it go: at most a few
    decoded images are alive at once, not the whole folder."""
    n = 40
    lines = [{"image": f"img{i % 4}.png", "caption": f"picture {i}"} for i in range(n)]
    root = write_folder(tmp_path / "d", lines, n_images=4)
    alive, most = [0], [0]
    decode = folder.load_image

    def gone():
        alive[0] -= 1

    def tracked(*a, **k):
        x = decode(*a, **k)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(x, gone)
        return x
    monkeypatch.setattr(folder, "load_image", tracked)
    builder = folder.prepare(folder.FolderSpec(str(root)), data_dir=str(tmp_path / "tfds"),
                             log=lambda m: None)
    src = folder.FolderSource(builder.data_dir)
    assert len(src) == n and src[39]["id"] == "captions.jsonl:40"
    np.testing.assert_array_equal(src[5]["images"][0], np.full((32, 32, 3), 40, np.uint8))
    assert 1 <= most[0] <= 4, most[0]
