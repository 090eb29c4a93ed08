"""Text tokenizers (mmar/tokenizers/text/, mmar/vocab.py): BPE / unigram training, the id
layout, determinism, streaming, the run-directory stage and its errors, the token-shard
check, and export: `transformers.AutoTokenizer` on an export encodes captions to mmar's ids."""
import json
import pathlib
import subprocess
import sys
import tracemalloc
import types

import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar import rundir
from mmar import vocab as vocab_lib
from mmar.data import pipeline, sequences, tokens
from mmar.errors import MissingStageError
from mmar.export import assets
from mmar.jobs import text_tokenizer_train
from mmar.tokenizers.text import corpus, model, train
from mmar.vocab import SPECIALS

ROOT = pathlib.Path(__file__).resolve().parents[2]
CAPTIONS = ["a red circle left of a blue square", "two green squares",
            "a yellow triangle above a purple circle, naïve café ✓",
            "three blue circles", "the digit 7", "  spaces  and\ttabs\n", ""]
# a deterministic corpus of real English lines (the repository's docs)
DOC_LINES = [line for f in ("README.md", "docs/architecture.md", "docs/data.md")
             for line in (ROOT / f).read_text().splitlines() if line.strip()]


def _cfg(test_config, **vocab):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    with cfg.unlocked():
        cfg.vocab.update(vocab)
        cfg.model.vocab_size = 0
    return config_lib.validate(cfg)


def _trained(kind, size, texts=DOC_LINES):
    json_text, summary = train.train(iter(texts), kind, size, log=lambda _: None)
    return model.TextTokenizer(json_text, kind=kind, vocab_size=size), summary


def test_bpe_round_trips_any_text_in_fewer_ids(test_text_tokenizer):
    tok = test_text_tokenizer
    assert tok.vocab_size == 300 and tok.kind == "bpe"
    for text in CAPTIONS:
        ids = tok.encode(text)
        assert all(0 <= i < 300 for i in ids)
        assert tok.decode(ids) == text
    caption = CAPTIONS[0]
    assert len(tok.encode(caption)) * 2 < len(caption.encode("utf-8"))   # learned merges
    assert tok.encode_batch(CAPTIONS) == [tok.encode(t) for t in CAPTIONS]
    # specials and image ids are not text: decoding drops them, as for bytes
    assert tok.decode([300, *tok.encode("hi"), 301, 400]) == "hi"


def test_vocab_layout_puts_specials_after_the_text_ids(test_config, test_text_tokenizer):
    v = config_lib.make_vocab(test_config)
    assert (v.text_size, v.pad, v.bos, v.eos, v.boi, v.eoi) == (300, 300, 301, 302, 303, 304)
    assert v.image_offset == 305 and v.size == 512 == test_config.model.vocab_size
    ids = test_text_tokenizer.encode(CAPTIONS[0])
    t, m = sequences.pair_tokens(ids, v.image_ids([0, 124]), v, image_first=False)
    assert t.tolist() == [v.bos, *ids, v.boi, 305, 429, v.eoi, v.eos]
    assert v.is_text(ids).all() and not v.is_text([v.pad, v.bos, v.image_offset]).any()
    row = pipeline.PairToRow(v, test_config.data, test_text_tokenizer).random_map(
        {"caption": CAPTIONS[0], "codes": np.arange(16)}, np.random.default_rng(0))
    text_ids = [int(x) for x in row["tokens"] if x < v.text_size]
    assert test_text_tokenizer.decode(text_ids) == CAPTIONS[0]
    with pytest.raises(ValueError, match="300 text ids needs its text tokenizer"):
        pipeline.PairToRow(v, test_config.data)    # never bytes in a BPE vocabulary


def test_unigram_round_trips_and_pads_to_its_size():
    tok, summary = _trained("unigram", 600)
    assert tok.file_ids == 600 and summary["kind"] == "unigram"
    for text in CAPTIONS + DOC_LINES[:50]:
        assert tok.decode(tok.encode(text)) == text
    assert summary["bytes_per_token"] > 1.5


def test_small_text_is_padded_with_fillers_never_produced():
    tok, summary = _trained("bpe", 400, ["a red circle", "a blue square"] * 20)
    assert summary["filler_ids"] > 0 and tok.file_ids == 400
    assert summary["learned_ids"] + summary["filler_ids"] == 400
    fillers = set(range(summary["learned_ids"], 400))
    for text in ("<unused_0>", "a red <unused_3> circle", *CAPTIONS):
        assert not fillers & set(tok.encode(text))


def test_bpe_training_is_deterministic_across_processes():
    script = ("import sys, hashlib; from mmar.tokenizers.text import train;"
              "lines = open(sys.argv[1]).read().splitlines();"
              "j, _ = train.train(iter(lines), 'bpe', 700, log=lambda _: None);"
              "print(hashlib.sha256(j.encode()).hexdigest())")
    corpus_file = ROOT / "docs/architecture.md"
    lines = [ln for ln in corpus_file.read_text().splitlines()]
    here, _ = train.train(iter(lines), "bpe", 700, log=lambda _: None)
    import hashlib
    want = hashlib.sha256(here.encode()).hexdigest()
    for _ in range(2):   # fresh processes: other hash seeds, other thread timing
        out = subprocess.run([sys.executable, "-c", script, str(corpus_file)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.strip() == want


def test_texts_stream_with_bounded_memory():
    """0.8 MB of distinct text through training: Python memory stays far below it (a list
    of the texts would hold it all; measured: ~0.1 MB at peak); held-out text is capped."""
    produced = []

    def texts():
        rng = np.random.default_rng(0)
        words = [f"w{i:03d}" for i in range(300)]
        for i in range(800):
            produced.append(i)
            yield " ".join(rng.choice(words, 200)) + f" #{i}"   # ~1 KB, all distinct

    tracemalloc.start()
    _, summary = train.train(texts(), "bpe", 400, log=lambda _: None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(produced) == 800 and summary["train_bytes"] > 0.7e6
    assert peak < 0.3e6, f"peak {peak / 1e6:.2f} MB of Python memory for ~0.8 MB of text"
    stream = train.Stream(texts(), held_bytes=16 << 10, log=lambda _: None)
    assert sum(1 for _ in stream) == 760 and sum(map(len, stream.held_out)) <= 16 << 10
    assert isinstance(corpus.texts(ml_collections.ConfigDict({"mixture": ""})),
                      types.GeneratorType)


def test_stage_keeps_its_tokenizer_and_refuses_another_size(test_config, tmp_path):
    assert rundir.load_text_tokenizer(_cfg(test_config, text_tokenizer="bytes")).kind == "bytes"
    with pytest.raises(MissingStageError) as e:
        rundir.load_text_tokenizer(test_config, tmp_path)
    assert str(e.value) == (f"vocab.text_tokenizer='bpe': no trained text tokenizer in "
                            f"{tmp_path}/text_tokenizer: run `mmar text-tokenizer-train` "
                            "with the same --config and --workdir first")
    summary = text_tokenizer_train.run(test_config, tmp_path, log=lambda _: None)
    assert summary["vocab_size"] == 300 and summary["held_out_texts"] > 0
    first = rundir.text_tokenizer_file(tmp_path).read_text()
    assert text_tokenizer_train.run(test_config, tmp_path, log=lambda _: None) == summary
    assert rundir.text_tokenizer_file(tmp_path).read_text() == first
    bigger = _cfg(test_config, text_vocab_size=320)
    with pytest.raises(model.TextTokenizerError, match="a bpe tokenizer of 300 ids, but this "
                                                       "config has vocab.text_vocab_size=320"):
        rundir.load_text_tokenizer(bigger, tmp_path)
    with pytest.raises(Exception, match="holds a bpe tokenizer of 300 ids; this config asks "
                                        "for bpe of 320"):
        text_tokenizer_train.run(bigger, tmp_path, log=lambda _: None)


def test_an_unknown_path_is_one_error_naming_the_field(test_config, tmp_path):
    with pytest.raises(config_lib.ConfigError) as e:
        _cfg(test_config, text_tokenizer=str(tmp_path / "nope" / "tokenizer.json"))
    assert str(e.value).startswith(f"vocab.text_tokenizer='{tmp_path}/nope/tokenizer.json': "
                                   "no such file")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(config_lib.ConfigError, match=r"^vocab.text_tokenizer: .* is not a "
                                                     r"tokenizers tokenizer.json"):
        _cfg(test_config, text_tokenizer=str(tmp_path))   # a directory: its tokenizer.json
    with pytest.raises(config_lib.ConfigError, match=r"^vocab.text_vocab_size=100: must be"):
        _cfg(test_config, text_vocab_size=100)


def test_shards_of_another_text_tokenizer_are_refused():
    made = {"config": {}, "text_tokenizer": {"kind": "bpe", "size": 300, "sha256": "ab" * 32}}
    ours = {"kind": "bpe", "size": 300, "sha256": "cd" * 32}
    # only the text tokenizer differs: the image checks pass on identical identities
    base = {"config": {"quantizer": "fsq"}, "num_codes": 125, "depth": 1, "image_size": 32,
            "params_sha256": "00", "step": 1}
    meta = {"tokenizer": {**base, "text_tokenizer": made["text_tokenizer"]},
            "source_settings": {}}
    with pytest.raises(tokens.TokensError, match=r"^x/metadata.json: made for the text "
                                                 r"tokenizer 'bpe' \(300 ids, tokenizer.json "
                                                 r"sha256 abababababab..\), this run's is "
                                                 r"'bpe' \(300 ids, tokenizer.json sha256 "
                                                 r"cdcdcdcdcdcd..\)"):
        tokens.check_tokenizer(meta, {**base, "text_tokenizer": ours}, {}, "x/metadata.json")
    tokens.check_tokenizer(meta, {**base, "text_tokenizer": made["text_tokenizer"]}, {}, "x")
    old = {"tokenizer": base, "source_settings": {}}   # metadata from before: bytes
    tokens.check_tokenizer(old, {**base, "text_tokenizer": vocab_lib.ByteTokenizer().identity()},
                           {}, "x")
    with pytest.raises(tokens.TokensError, match="made for the text tokenizer 'bytes'"):
        tokens.check_tokenizer(old, {**base, "text_tokenizer": ours}, {}, "x")


# ---- export: AutoTokenizer gives mmar's ids ----------------------------------------------

def _pretrained_style(tmp_path) -> pathlib.Path:
    """A tokenizer.json as a pretrained model ships it: its own specials (one named like
    mmar's `<pad>`), a post-processor adding its own BOS, a normalizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(DOC_LINES, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "<pad>", "<|endoftext|>"],
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    path = tmp_path / "pretrained" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


@pytest.mark.parametrize("kind", ["bpe", "unigram", "file", "file_reserved", "bytes"])
def test_export_autotokenizer_encodes_captions_to_mmar_ids(kind, test_config,
                                                           test_text_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    if kind == "bpe":
        cfg, text = test_config, test_text_tokenizer
    elif kind == "unigram":
        cfg = _cfg(test_config, text_tokenizer="unigram", text_vocab_size=600)
        text, _ = _trained("unigram", 600)
    elif kind == "bytes":
        cfg = _cfg(test_config, text_tokenizer="bytes")
        text = rundir.load_text_tokenizer(cfg)
    else:
        path = _pretrained_style(tmp_path)
        reserve = 640 if kind == "file_reserved" else 0   # embedding rows beyond the file
        cfg = _cfg(test_config, text_tokenizer=str(path), text_vocab_size=reserve)
        text = rundir.load_text_tokenizer(cfg)
        assert text.vocab_size == (640 if reserve else 500)
    vocab = config_lib.make_vocab(cfg)
    out = tmp_path / "export"
    out.mkdir()
    names = assets.write_text_tokenizer(out, vocab, cfg, None if kind == "bytes" else text)
    hf = transformers.AutoTokenizer.from_pretrained(out)
    for caption in CAPTIONS + ["<|endoftext|> is the pretrained one's own special"]:
        assert hf(caption).input_ids == [vocab.bos, *text.encode(caption)], caption
        assert hf.decode(hf(caption).input_ids[1:]) == text.decode(text.encode(caption))
    specials = [names[n] for n in SPECIALS]
    assert hf.convert_tokens_to_ids(specials) == [vocab.pad, vocab.bos, vocab.eos, vocab.boi,
                                                  vocab.eoi]
    assert names["<pad>"] == ("<|mmar_pad|>" if kind.startswith("file") else "<pad>")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (vocab.bos, vocab.eos,
                                                                   vocab.pad)
    kept = out / "text_tokenizer" / "tokenizer.json"   # what `mmar import` restores
    assert kept.is_file() == (kind in ("bpe", "unigram"))
    if kept.is_file():
        assert json.loads(kept.read_text()) == json.loads(text.json_text)


@pytest.mark.e2e
@pytest.mark.slow
def test_documented_text_tokenizer_command(data_dir, tmp_path):
    """docs/tokenizers.md's text tokenizer block, on the `test` preset."""
    import os
    import shlex
    text = (ROOT / "docs/tokenizers.md").read_text()
    block = text.split("tests/tokenizers/test_text_tokenizer.py runs this block")[1]
    lines = block.split("```bash")[1].split("```")[0].strip().splitlines()
    assert [shlex.split(line)[:2] for line in lines] == [["mmar", "text-tokenizer-train"]]
    args = [f"--config={ROOT}/" + a.split("=", 1)[1].replace(":tiny", ":test")
            if a.startswith("--config=") else f"--workdir={tmp_path}"
            if a.startswith("--workdir=") else a for a in shlex.split(lines[0])[1:]]
    proc = subprocess.run([sys.executable, "-m", "mmar", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ,
                                                           MMAR_DATA_DIR=str(data_dir)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "text_tokenizer" / "summary.json").read_text())
    assert summary["kind"] == "bpe" and summary["vocab_size"] == 300
    assert summary["bytes_per_token"] > 2 and "bytes per token" in proc.stdout


@pytest.mark.slow
def test_import_uses_the_models_tokenizer_and_restores_a_trained_one(test_config, tmp_path):
    """`mmar import` of a text LLM with a tokenizer.json: the run's text ids are the model's;
    of an mmar export of a BPE run: the trained tokenizer comes back byte for byte."""
    pytest.importorskip("torch")
    import shutil
    from mmar.export import hf, import_hf
    from tests.helpers import export_runs
    export_runs.save_llm(tmp_path / "llm", qwen3=False, text_vocab=520)
    shutil.copyfile(_pretrained_style(tmp_path), tmp_path / "llm" / "tokenizer.json")
    cfg, _, text_size = import_hf.load_params(tmp_path / "llm", export_runs.make_config())
    assert text_size == 520 and cfg.vocab.text_vocab_size == 520
    assert cfg.vocab.text_tokenizer == str((tmp_path / "llm" / "tokenizer.json").absolute())
    v = config_lib.make_vocab(cfg)
    assert (v.text_size, v.bos, v.image_offset) == (520, 521, 525)
    assert rundir.load_text_tokenizer(cfg).encode("a red circle") == \
        model.load(tmp_path / "llm" / "tokenizer.json", kind="file", vocab_size=520).encode(
            "a red circle")

    run_cfg = export_runs.make_config()   # the test preset: a trained BPE
    export_runs.write_run(tmp_path / "run", run_cfg)
    hf.export(tmp_path / "run", tmp_path / "hf", log=lambda _: None)
    import_hf.import_hf(tmp_path / "hf", tmp_path / "back", log=lambda _: None)
    got = (tmp_path / "back" / "text_tokenizer" / "tokenizer.json").read_bytes()
    assert got == rundir.text_tokenizer_file(tmp_path / "run").read_bytes()
    assert rundir.load_text_tokenizer(run_cfg, tmp_path / "back").vocab_size == 300
