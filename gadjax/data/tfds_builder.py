"""A tensorflow-datasets builder that turns local JSONL / parquet row files into array_record.

Works WITHOUT TensorFlow installed (tfds 4.9.10 + array_record): features are plain Text / Scalar /
Sequence, written as array_record and read back with ``tfds.data_source`` (see
:class:`gadjax.data.sources.TfdsSource`). Rows are validated with
:func:`gadjax.data.rows.normalize_row` while building, and the source order is kept
(``disable_shuffling``) so row i of the split is row i of the concatenated inputs (minus skipped rows).

Example::

    build_tfds({"train": ["a.jsonl", "b.parquet"], "test": ["t.jsonl"]}, data_dir="/data/gad")
    src = TfdsSource("/data/gad", split="train")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from gadjax.data.rows import BadRowCounter, read_rows


class GadRows(tfds.core.GeneratorBasedBuilder):
    """Chat prompts with optional teacher responses (GAD / messages / prompt formats)."""

    name = "gad_rows"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "messages, response, has_response, where"}

    # tfds derives code_path through `importlib_resources` (a backport package that is not installed
    # here) for builders outside its own tree; this builder needs no checksums file next to its code.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def __init__(
        self, *, split_paths: Mapping[str, Sequence[str]] | None = None, skip_bad_rows: bool = False, **kwargs
    ):
        self._split_paths = dict(split_paths or {})
        self._skip_bad_rows = skip_bad_rows
        self.bad_rows: dict[str, BadRowCounter] = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "messages": tfds.features.Sequence(
                        {"role": tfds.features.Text(), "content": tfds.features.Text()}
                    ),
                    "response": tfds.features.Text(),  # "" when has_response is False
                    "has_response": tfds.features.Scalar(dtype=np.bool_),
                    "where": tfds.features.Text(),  # original file:line, for messages
                }
            ),
            disable_shuffling=True,  # keep the source order: example_id == position
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        if not self._split_paths:
            raise ValueError("GadRows needs split_paths={split: [files]} to build")
        return {split: self._generate_examples(split, paths) for split, paths in self._split_paths.items()}

    def _generate_examples(self, split: str, paths: Sequence[str]):
        counter = self.bad_rows.setdefault(split, BadRowCounter())
        for path in paths:
            for line, row in read_rows(path, skip_bad_rows=self._skip_bad_rows, counter=counter):
                where = f"{os.fspath(path)}:{line}"
                yield (
                    where,
                    {
                        "messages": row.messages,
                        "response": row.response or "",
                        "has_response": row.response is not None,
                        "where": where,
                    },
                )


def build_tfds(
    split_paths: Mapping[str, Sequence[str | os.PathLike]],
    data_dir: str | os.PathLike,
    skip_bad_rows: bool = False,
) -> dict[str, dict]:
    """Convert local JSONL / parquet files into a ``gad_rows`` array_record dataset under ``data_dir``.

    Returns the bad-row report per split (empty counts unless ``skip_bad_rows``). A dataset already
    prepared in ``data_dir`` is reused (tfds semantics): use a fresh ``data_dir`` per corpus.
    """
    for paths in split_paths.values():
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"data file not found: {p}")
    builder = GadRows(
        split_paths={k: [os.fspath(p) for p in v] for k, v in split_paths.items()},
        skip_bad_rows=skip_bad_rows,
        data_dir=os.fspath(data_dir),
        file_format="array_record",
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return {split: c.report() for split, c in builder.bad_rows.items()}
