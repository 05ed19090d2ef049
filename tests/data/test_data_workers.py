"""grain worker processes (worker_count > 0): same batches as in-process, and resumable."""

import json

import numpy as np
import pytest
from data_fixtures import gad_rows, write_jsonl

from gadjax.data.pipeline import DataConfig, DataPipeline
from gadjax.data.sources import JsonlSource


@pytest.mark.slow
def test_worker_processes_match_in_process_and_resume(tmp_path, tokenizer):
    from absl import flags

    flags.FLAGS(["pytest"])  # grain workers read absl flags (DESIGN.md)
    src = JsonlSource(write_jsonl(tmp_path / "a.jsonl", gad_rows(24)))

    def it(workers, state=None):
        cfg = DataConfig(batch_size=4, max_prompt_tokens=32, max_response_tokens=16, num_epochs=1, seed=4,
                         worker_count=workers)
        return DataPipeline(src, tokenizer, cfg, process_index=0, process_count=1).iterator(state)

    ref = list(it(0))
    a = it(2)
    head = [next(a), next(a)]
    state = json.loads(json.dumps(a.get_state()))
    a.close()
    b = it(2, state)
    got = head + list(b)
    b.close()
    assert len(got) == len(ref) == 6
    for x, y in zip(got, ref, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
