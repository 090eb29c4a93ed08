"""Built-in document data sets as TFDS ArrayRecord builders: shape stories and digits.

- `mmar_stories`: interleaved shape stories (mmar/data/stories.py): several images whose
  content changes as the text says, so each image depends on the ones before; "scenes" holds
  the true objects of every image (JSON), for checking generated images with the shape judge.
- `mmar_digits`: scikit-learn's handwritten digits (1,797 real 8x8 scans, 0-16 grey levels)
  upscaled to `image_size` as white-on-black RGB, captioned "the digit 7": real pixels,
  class-conditional. `test` holds every 6th image, `train` the rest.

Both write records in the common document form (mmar/data/builders/documents.py), so the same
`DocumentSource` and pipeline read them. Each (settings) gets its own builder config, named by
a stable hash, as for the shapes data set.

    src = prepare_stories(ShapesSpec(), data_dir=..., num_train=2000, num_test=200)["train"]
    src = prepare_digits(data_dir=..., image_size=32)["test"]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

from mmar.data import stories
from mmar.data.builders import documents
from mmar.data.builders.documents import DocumentSource, document_features
from mmar.data.synthetic import ShapesSpec


def _name(prefix: str, settings: dict) -> str:
    key = json.dumps(settings, sort_keys=True, default=list)
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class SettingsConfig(tfds.core.BuilderConfig):
    settings: dict = dataclasses.field(default_factory=dict)


class Stories(tfds.core.GeneratorBasedBuilder):
    """Interleaved shape stories; splits train / test."""

    name = "mmar_stories"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path = epath.Path(__file__)  # see shapes.py

    def _info(self):
        size = self.builder_config.settings["spec"]["image_size"]
        return self.dataset_info_from_configs(features=document_features(size, scenes=True),
                                              disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples("train"),
                "test": self._generate_examples("test")}

    def _generate_examples(self, split):
        s = self.builder_config.settings
        spec = ShapesSpec(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in s["spec"].items()})
        n = s["num_train"] if split == "train" else s["num_test"]
        for i, story in enumerate(stories.make_stories(
                spec, n, min_images=s["min_images"], max_images=s["max_images"],
                seed=0 if split == "train" else 1)):
            yield i, {"id": f"stories/{split}:{i}", "kind": "document",
                      "segments": json.dumps(story["segments"]),
                      "images": [PIL.Image.fromarray(x) for x in story["images"]],
                      "scenes": json.dumps(story["scenes"])}


def digit_images(image_size: int = 32):
    """(uint8 [1797, S, S, 3] white on black, labels [1797]) from scikit-learn's digits."""
    from sklearn.datasets import load_digits  # ships the data inside the package
    d = load_digits()
    grey = np.round(d.images * (255 / 16)).astype(np.uint8)
    scale = -(-image_size // 8)
    big = grey.repeat(scale, axis=1).repeat(scale, axis=2)
    if big.shape[1] != image_size:
        big = np.stack([np.asarray(PIL.Image.fromarray(x).resize((image_size, image_size),
                                                                 PIL.Image.Resampling.BICUBIC))
                        for x in big])
    return np.repeat(big[..., None], 3, axis=-1), d.target.astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits as caption pairs "the digit N"; splits train / test."""

    name = "mmar_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path = epath.Path(__file__)

    def _info(self):
        return self.dataset_info_from_configs(
            features=document_features(self.builder_config.settings["image_size"]),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples("train"),
                "test": self._generate_examples("test")}

    def _generate_examples(self, split):
        images, labels = digit_images(self.builder_config.settings["image_size"])
        for i in range(len(images)):
            if (i % 6 == 0) != (split == "test"):
                continue
            yield i, {"id": f"digits:{i}", "kind": "caption",
                      "segments": json.dumps([{"text": f"the digit {labels[i]}"}, {"image": 0}]),
                      "images": [PIL.Image.fromarray(images[i])]}


def _prepare(cls, prefix, settings, data_dir, log):
    config = SettingsConfig(name=_name(prefix, settings), settings=settings,
                            description=json.dumps(settings, sort_keys=True, default=list))
    builder = cls(config=config, data_dir=data_dir)
    if not builder.is_prepared():
        seconds = documents.write_array_record(builder)
        log(f"[data] prepared {cls.name} in {builder.data_dir} ({seconds:.1f}s)")
    return {split: DocumentSource(builder.data_dir, split) for split in ("train", "test")}


def prepare_stories(spec: ShapesSpec, *, data_dir: str, num_train: int, num_test: int,
                    min_images: int = 2, max_images: int = 4, log=print):
    """{"train": DocumentSource, "test": DocumentSource} of shape stories (built if needed)."""
    settings = dict(spec=spec.to_dict(), num_train=num_train, num_test=num_test,
                    min_images=min_images, max_images=max_images)
    return _prepare(Stories, "t", settings, data_dir, log)


def prepare_digits(*, data_dir: str, image_size: int = 32, log=print):
    """{"train": DocumentSource, "test": DocumentSource} of digits (built if needed)."""
    return _prepare(Digits, "d", dict(image_size=image_size), data_dir, log)
