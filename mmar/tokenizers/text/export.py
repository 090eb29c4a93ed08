"""The tokenizer.json an export ships: mmar's text ids, then mmar's special tokens at mmar's
ids, so that `transformers.AutoTokenizer.from_pretrained(export_dir)` encodes a caption to
exactly the ids mmar trains on (`<bos>` first, as mmar's prompts start).

- bytes: a `tokenizers` BPE without merges over GPT-2's byte-to-unicode alphabet, so id b is
  byte b exactly as in mmar.
- a tokenizer.json (trained bpe / unigram, or a pretrained model's): the file itself with
  its own post-processor replaced (mmar adds no BOS/EOS of the file's) and mmar's specials
  appended. `tokenizers` gives an added token the id its model holds for the same string,
  else the next free id; so the specials (and fillers for ids a file leaves unused below
  V_text) are written into the model's vocabulary at their ids too, which pins them.

A special whose name the file already uses (say a pretrained `<pad>`) is written as
`<|mmar_pad|>`; `special_tokens` returns the names used. Literal special names inside a
caption are the one difference: AutoTokenizer reads `<bos>` in text as the special token,
mmar as five characters.
"""
from __future__ import annotations

import json

import tokenizers

from mmar import vocab as vocab_lib
from mmar.vocab import SPECIALS

UNUSED = "<mmar_unused_{}>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (what `tokenizers`'
    ByteLevel pre-tokenizer and decoder use)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_json() -> dict:
    """mmar's byte tokenizer as a tokenizer.json (parsed), without specials."""
    table = bytes_to_unicode()
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
            "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {table[b]: b for b in range(256)}, "merges": []}}


def special_tokens(data: dict) -> dict[str, str]:
    """mmar special name -> the string it takes in `data` (its own unless the file uses it)."""
    vocab = data["model"]["vocab"]
    taken = set(vocab) if isinstance(vocab, dict) else {piece for piece, _ in vocab}
    taken |= {t["content"] for t in data.get("added_tokens") or []}
    return {name: name if name not in taken else f"<|mmar_{name[1:-1]}|>" for name in SPECIALS}


def _pin(model: dict, entries: list[tuple[str, int]]) -> None:
    """Puts (string, id) into the model's vocabulary at exactly that id."""
    vocab = model["vocab"]
    if isinstance(vocab, dict):
        vocab.update(dict(entries))
        return
    low = min((score for _, score in vocab), default=0.0) - 10.0   # Unigram: never chosen
    for content, i in entries:
        if i != len(vocab):
            raise ValueError(f"cannot place {content!r} at id {i} of a {len(vocab)}-piece "
                             "unigram vocabulary")
        vocab.append([content, low])


def with_specials(data: dict, text_size: int) -> tuple[dict, dict[str, str]]:
    """(tokenizer.json with mmar's specials at `text_size + i`, special name -> string)."""
    have = vocab_lib.ids_in_tokenizer_json(data)
    if have > text_size:
        raise ValueError(f"the tokenizer uses {have} ids, more than the run's {text_size} "
                         "text ids")
    names = special_tokens(data)
    ids = {name: text_size + i for i, name in enumerate(SPECIALS)}
    _pin(data["model"], [(UNUSED.format(k), have + k) for k in range(text_size - have)]
         + [(names[n], ids[n]) for n in SPECIALS])
    data["added_tokens"] = list(data.get("added_tokens") or []) + [
        {"id": ids[n], "content": names[n], "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True} for n in SPECIALS]
    bos = names["<bos>"]
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [ids["<bos>"]], "tokens": [bos]}}}
    data["truncation"] = data["padding"] = None
    check = tokenizers.Tokenizer.from_str(json.dumps(data))
    for n in SPECIALS:
        got = check.token_to_id(names[n])
        if got != ids[n]:
            raise ValueError(f"the exported tokenizer gives {names[n]!r} id {got}, mmar's is "
                             f"{ids[n]}")
    return data, names


def tokenizer_config(names: dict[str, str], model_max_length: int) -> dict:
    """tokenizer_config.json: a plain PreTrainedTokenizerFast (no custom code)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": names["<bos>"],
            "eos_token": names["<eos>"], "pad_token": names["<pad>"], "add_bos_token": True,
            "model_max_length": int(model_max_length), "clean_up_tokenization_spaces": False}
