"""Sources: JSONL / parquet / tfds read back the same rows; tfds works without TensorFlow."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_fixtures import gad_rows, write_jsonl

from gadjax.data.rows import DataError
from gadjax.data.sources import JsonlSource, ParquetSource, TfdsSource, open_source
from gadjax.data.tfds_builder import build_tfds

MIXED = gad_rows(5) + [
    {"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "héllo wörld ✓"}],
     "response": "multi\nline\tanswer"},
    {"prompt": "only a prompt"},
    {"content": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "orig"}],
     "teacher_response": "t"},
]


def test_jsonl_and_parquet_sources_agree(tmp_path):
    jl = JsonlSource(write_jsonl(tmp_path / "a.jsonl", MIXED))
    pq_path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(gad_rows(5)), pq_path)
    pa_src = ParquetSource(pq_path)
    assert len(jl) == len(MIXED) and len(pa_src) == 5
    for i in range(5):
        assert jl[i] == pa_src[i]
    only = [{"role": "user", "content": "only a prompt"}]
    assert jl[6] == {"example_id": 6, "messages": only, "response": None, "finish_reason": None}
    assert jl[7]["messages"] == [{"role": "user", "content": "q"}]
    assert jl.where(6) == f"{tmp_path / 'a.jsonl'}:7"


def test_tfds_roundtrip_identical_rows(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", MIXED)
    test = write_jsonl(tmp_path / "t.jsonl", gad_rows(3))
    report = build_tfds({"train": [jsonl], "test": [test]}, tmp_path / "tfds")
    assert report["train"]["skipped"] == 0
    ref = open_source(jsonl)
    src = open_source(tmp_path / "tfds", split="train")
    assert isinstance(src, TfdsSource) and len(src) == len(ref)
    assert [src[i] for i in range(len(src))] == [ref[i] for i in range(len(ref))]
    assert src.where(3) == f"{jsonl}:4"
    assert len(TfdsSource(tmp_path / "tfds", split="test")) == 3


def test_tfds_needs_no_tensorflow(tmp_path):
    # A fresh interpreter: build + read back, then prove TensorFlow was never imported (nor installed).
    code = (
        "import sys, json\n"
        "from gadjax.data.tfds_builder import build_tfds\n"
        "from gadjax.data.sources import TfdsSource\n"
        f"p = {str(tmp_path / 'a.jsonl')!r}\n"
        "open(p, 'w').write(json.dumps({'prompt': 'x', 'response': 'y'}) + '\\n')\n"
        f"build_tfds({{'train': [p]}}, {str(tmp_path / 'tf')!r})\n"
        f"assert TfdsSource({str(tmp_path / 'tf')!r})[0]['response'] == 'y'\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "import importlib.util; assert importlib.util.find_spec('tensorflow') is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_tfds_build_skips_and_counts_bad_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": ""}\n{bad\n')
    with pytest.raises(DataError, match=":2: field 'prompt' is empty"):
        build_tfds({"train": [path]}, tmp_path / "strict")
    report = build_tfds({"train": [path]}, tmp_path / "skip", skip_bad_rows=True)
    assert report["train"]["by_reason"] == {"empty_field": 1, "bad_json": 1}
    assert len(TfdsSource(tmp_path / "skip")) == 1


def test_source_errors_name_file_and_line_and_skip_counts(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": 3}\n{"prompt": "b"}\n\xff\xfe\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: field 'prompt' must be a string"):
        JsonlSource(path)
    src = JsonlSource(path, skip_bad_rows=True)
    assert len(src) == 2 and src[1]["messages"][0]["content"] == "b" and src.where(1).endswith(":3")
    assert dict(src.bad_rows.by_reason) == {"bad_type": 1, "invalid_utf8": 1}
