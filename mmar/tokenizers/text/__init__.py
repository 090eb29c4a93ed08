"""mmar.tokenizers.text: text <-> text ids with a Hugging Face `tokenizers` tokenizer.json.

`vocab.text_tokenizer` picks the text tokenizer (mmar/vocab.py: the id layout; the byte
tokenizer lives there). This package holds the others:

- model.py   `TextTokenizer`: a tokenizer.json as mmar text ids [0, V_text), loaded by
             mmar/rundir.py (trained: WORKDIR/text_tokenizer/tokenizer.json) or from a path
- train.py   byte-level BPE / unigram training from a stream of texts (`mmar
             text-tokenizer-train`), padded to exactly `vocab.text_vocab_size`, measured on
             held-out text (bytes per token)
- corpus.py  the text of the configured sources (`data.mixture`), streamed
- export.py  the tokenizer.json an export ships: the run's, plus mmar's special tokens at
             mmar's ids, so that `transformers.AutoTokenizer` encodes captions to mmar's ids
"""
RUN_SUBDIR = "text_tokenizer"   # in a run directory (mmar/rundir.py names it)
FILENAME = "tokenizer.json"
