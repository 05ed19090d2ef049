"""python -m gadjax.plan.lengths: real tokens per program under a length profile, padded vs packed."""

from __future__ import annotations

import os

from gadjax.data.lengths import PAPER
from gadjax.plan.lengths import load_config, main, program_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_v5p_padded_step_is_mostly_padding_and_packing_is_not(capsys):
    c = load_config(os.path.join(ROOT, "configs", "v5p.py"), [])
    stats = program_tokens(c, PAPER, steps=1, shards=8)
    for name, s in stats.items():
        # The estimate: ~85% of a padded pass is padding at ~400-500 real tokens per row.
        assert 0.08 < s["real_fraction_padded"] < 0.2, name
        assert s["real_fraction_packed"] > 0.8 and s["real_tokens"] <= s["packed_tokens"], name
        assert 1 <= s["micro_batches"] <= s["micro_bucket"] <= s["micro_worst_bucket"], name
    assert stats["g_step"]["rows"] == 2048 and stats["d_step"]["rows"] == 256 * 9
    main(
        [
            "--config",
            os.path.join(ROOT, "configs", "tiny.py"),
            "--profile",
            "cpu",
            "--steps",
            "1",
            "--shards",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert "| g_step |" in out and '"profile": "cpu"' in out
