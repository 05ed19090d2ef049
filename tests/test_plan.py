"""Compile-only plan: configs/tiny.py's programs compiled by libtpu for a v5p-8 topology (no TPU here).

The reference nobody here wrote is XLA's TPU compiler itself: its memory_analysis numbers, and its
RESOURCE_EXHAUSTED verdict on a config that cannot fit a 95 GiB chip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("libtpu") is None:
    pytest.skip(
        "libtpu is not installed: the compile-only TPU plan needs the tpu extra (pip install -e '.[tpu]')",
        allow_module_level=True,
    )

from gadjax import plan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402


def test_topology_names():
    t = plan.parse_topology("v5p-64")
    assert (t.topology_name, t.num_chips, t.chip.hbm_bytes) == ("v5:2x4x4", 32, 95 * plan.GiB)
    assert plan.parse_topology("v5p-8").topology_name == "v5:2x2x1"  # v5p-N counts TensorCores
    assert plan.parse_topology("v4-8").topology_name == "v4:2x2x1"
    assert plan.parse_topology("v5e-16").topology_name == "v5e:4x4"
    assert plan.parse_topology("v6e-8").topology_name == "v6e:2x4"
    assert plan.parse_topology("v5:4x4x4").num_chips == 64
    with pytest.raises(plan.PlanError, match="unknown v5p slice size"):
        plan.parse_topology("v5p-12")
    with pytest.raises(plan.PlanError, match="expected an accelerator type"):
        plan.parse_topology("h100-8")


def test_topology_devices_are_libtpu_chips():
    devs = plan.topology_devices(plan.parse_topology("v5p-16"))
    assert len(devs) == 8 and devs[0].device_kind == "TPU v5"


def test_tiny_compiles_for_v5p_8(capsys):
    rep = plan.main(tiny.get_config(), "v5p-8")
    out = capsys.readouterr().out
    assert rep["num_chips"] == 4 and rep["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert set(rep["programs"]) == set(plan.PROGRAMS)
    for name, p in rep["programs"].items():
        m = p["memory"]
        assert m["argument"] > 0 and m["output"] > 0 and m["generated_code"] > 0, name
        assert m["peak"] == m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]
        assert p["total_bytes"] == m["peak"] + p["other_resident_bytes"] <= rep["hbm_bytes_per_chip"]
        assert p["xla_flops_per_chip"] > 0 and p["model_flops_all_chips"] > 0
    # The train steps donate their state: XLA aliases it to the output.
    assert rep["programs"]["g_step"]["memory"]["alias"] > 0
    assert rep["programs"]["d_step"]["memory"]["alias"] > 0
    b = rep["breakdown_bytes_per_chip"]
    assert b["g_opt_state"] >= 2 * b["g_params"]  # Adam mu and nu, sharded like the params
    assert len(rep["largest_arrays"]) == 5
    assert "per chip, GiB" in out and "FITS" in out
    line = [ln for ln in out.splitlines() if ln.startswith('{"plan"')][-1]
    assert json.loads(line)["plan"]["topology"] == "v5p-8"


def test_program_plus_resident_state_over_hbm_fails_clearly():
    with pytest.raises(plan.PlanDoesNotFitError) as e:
        plan.run_plan(tiny.get_config(), "v5p-8", ("g_step",), hbm_bytes=1 << 20, log=None)
    msg = str(e.value)
    assert "g_step does not fit on v5p-8" in msg and "GiB" in msg
    assert "micro_batches_g (now 1" in msg and "remat='full'" in msg and "more chips than 4" in msg


def test_oversized_config_resource_exhausted_from_xla():
    c = tiny.get_config()
    c.data.batch_size = 64
    c.data.max_prompt_tokens = 8192
    c.rollout.max_new_tokens = 8192
    c.rollout.n_samples = 8  # 512 rows x 16k tokens: the f32 attention scores alone are ~2 TiB
    with pytest.raises(plan.PlanDoesNotFitError) as e:
        plan.run_plan(c, "v5p-8", ("g_step",), log=None)
    msg = str(e.value)
    assert "RESOURCE_EXHAUSTED" in msg and "g_step does not fit on v5p-8" in msg
    assert "hlo_temporaries" in msg and "capacity 95.74 GiB" in msg  # numbers parsed from XLA's text
    assert "GiB" in msg and "micro_batches_g (now 1" in msg and "fsdp" in msg


def test_parse_oom_message():
    msg = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
        "(2.08T) exceeds available HBM (95.74G)."
    )
    got = plan.parse_oom(msg)
    assert got["hlo_temporaries_bytes"] == pytest.approx(2.08 * (1 << 40))
    assert got["capacity_bytes"] == pytest.approx(95.74 * plan.GiB)
    msg = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
        "Used 120.50G of 95.74G hbm. Exceeded hbm capacity by 24.76G."
    )
    got = plan.parse_oom(msg)
    assert got["used_bytes"] == pytest.approx(120.5 * plan.GiB)
    assert got["capacity_bytes"] == pytest.approx(95.74 * plan.GiB)
    assert got["exceeded_bytes"] == pytest.approx(24.76 * plan.GiB)


def test_tiny_lora_compiles_and_trains_less_state_than_full(capsys):
    c = tiny.get_config()
    c.model.lora.rank = c.disc.lora.rank = 2
    c.model.base_dtype = "bfloat16"
    rep = plan.main(c, "v5p-8")
    out = capsys.readouterr().out
    assert set(rep["programs"]) == set(plan.PROGRAMS)
    lora, full = rep["trainable_bytes_per_chip"], rep["full_finetune_trainable_bytes_per_chip"]
    for tag in ("g", "d"):
        assert 0 < lora[f"{tag}_params"] < full[f"{tag}_params"] / 4
        assert 0 < lora[f"{tag}_opt_state"] < full[f"{tag}_opt_state"] / 4
    b = rep["breakdown_bytes_per_chip"]
    # The frozen bases are bf16: half of the f32 full model's parameter bytes (the D head is trainable).
    assert b["g_frozen_base"] * 2 == full["g_params"]
    assert b["ref_params"] == b["g_params"]  # the reference holds a copy of the adapters only
    assert "d_frozen_base_shared_with_g" in b  # D's frozen backbone is G's base, counted once
    assert rep["programs"]["g_step"]["memory"]["alias"] > 0  # the adapters' state is still donated
    assert "full fine-tuning:" in out and "LoRA rank 2" in out
