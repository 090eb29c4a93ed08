"""TFDS builder for the synthetic shapes data set, and a random-access loader.

The examples come from ``mmar.data.synthetic.make_examples``, so record ``i`` of a split
equals the ``i``-th example of that generator (shuffling on write is disabled). Each
(spec, sizes) gets its own builder config, named by a short stable hash, so different specs
never collide in one ``data_dir`` and a second build with the same spec reuses the files.

    src = load_split(ShapesSpec(), "train", data_dir="/tmp/tfds",
                     num_train=20_000, num_test=1_000, num_unseen=1_000)
    src[0]  # {"image": uint8 [32, 32, 3], "caption": "a red circle", "objects": "[...]"}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

from mmar.data.builders.documents import PreparedSplit, write_array_record
from mmar.data.synthetic import SPLIT_INDEX, ShapesSpec, make_examples

SPLITS = tuple(SPLIT_INDEX)


def config_name(spec: ShapesSpec, num_train: int, num_test: int, num_unseen: int) -> str:
    """A short name that is stable across runs and machines for (spec, sizes)."""
    key = json.dumps({"spec": spec.to_dict(), "sizes": [num_train, num_test, num_unseen]},
                     sort_keys=True)
    return "s" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    spec: ShapesSpec = dataclasses.field(default_factory=ShapesSpec)
    num_train: int = 20_000
    num_test: int = 1_000
    num_unseen: int = 1_000

    @classmethod
    def make(cls, spec: ShapesSpec, num_train: int, num_test: int,
             num_unseen: int) -> "ShapesConfig":
        return cls(name=config_name(spec, num_train, num_test, num_unseen),
                   description=json.dumps(spec.to_dict(), sort_keys=True),
                   spec=spec, num_train=num_train, num_test=num_test, num_unseen=num_unseen)

    def split_size(self, split: str) -> int:
        return {"train": self.num_train, "test": self.num_test,
                "unseen": self.num_unseen}[split]


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes with exact captions; splits train / test / unseen (held-out pairs)."""

    name = "mmar_shapes"  # distinct from any TFDS catalogue name
    # Bump whenever generation changes: prepared data is cached by spec and version.
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Captions use 'an' before vowels ('an orange circle')."}
    BUILDER_CONFIGS = [ShapesConfig.make(ShapesSpec(), 20_000, 1_000, 1_000)]
    # TFDS would find this file through `importlib_resources` (not a dependency of ours,
    # and missing from our environment); say where it is. No checksums file sits next to
    # it, so there is nothing to download or verify.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.spec.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "caption": tfds.features.Text(),
                "objects": tfds.features.Text(),
            }),
            disable_shuffling=True,  # record i == make_examples(...)[i]
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # synthetic: nothing to download
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        for i, ex in enumerate(make_examples(cfg.spec, split, cfg.split_size(split))):
            # A PIL image is PNG-encoded by PIL (lossless), several times faster than the
            # TF graph TFDS uses for numpy arrays.
            yield i, {**ex, "image": PIL.Image.fromarray(ex["image"])}


def make_builder(spec: ShapesSpec, *, data_dir: str, num_train: int, num_test: int,
                 num_unseen: int) -> Shapes:
    config = ShapesConfig.make(spec, num_train, num_test, num_unseen)
    if config.name == Shapes.BUILDER_CONFIGS[0].name:
        config = Shapes.BUILDER_CONFIGS[0]  # TFDS refuses a custom twin of a listed config
    return Shapes(config=config, data_dir=data_dir)


def prepare(spec: ShapesSpec, *, data_dir: str, num_train: int, num_test: int,
            num_unseen: int) -> Shapes:
    """Writes the data set as ArrayRecord files unless they already exist."""
    builder = make_builder(spec, data_dir=data_dir, num_train=num_train,
                           num_test=num_test, num_unseen=num_unseen)
    if not builder.is_prepared():
        n = num_train + num_test + num_unseen
        print(f"preparing shapes data set ({n} examples) in {builder.data_dir}", flush=True)
        seconds = write_array_record(builder)
        print(f"prepared shapes data set in {seconds:.1f}s", flush=True)
    return builder


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, np.ndarray):
        return _text(x.item())
    return str(x)


class ShapesSource(PreparedSplit):
    """One prepared split of the shapes data set (Grain ``RandomAccessDataSource``).

    Records are {"image": uint8 [H, W, 3], "caption": str, "objects": str (JSON)}.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self._open()[int(index)]
        return {"image": np.asarray(rec["image"], np.uint8), "caption": _text(rec["caption"]),
                "objects": _text(rec["objects"])}


def load_split(spec: ShapesSpec, split: str, *, data_dir: str, num_train: int,
               num_test: int, num_unseen: int) -> ShapesSource:
    """Prepares the data set if needed and returns a random-access source for ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    builder = prepare(spec, data_dir=data_dir, num_train=num_train, num_test=num_test,
                      num_unseen=num_unseen)
    return ShapesSource(builder.data_dir, split)


__all__ = ["Shapes", "ShapesConfig", "ShapesSource", "config_name", "make_builder",
           "prepare", "load_split"]
