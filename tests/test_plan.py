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
from tests.trainer.train_helpers import TEST_MESH  # noqa: E402


def _tiny():
    """configs/tiny.py on the tests' data x fsdp x tensor mesh (tiny.py itself takes every device as FSDP)."""
    c = tiny.get_config()
    c.mesh.shape = TEST_MESH
    return c


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
    rep = plan.main(_tiny(), "v5p-8")
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
    # Roofline: FLOPs at least the analytic count (XLA counts each loop body once), a positive bound per
    # program, and a step prediction that sums them.
    for name, p in rep["programs"].items():
        r = p["roofline"]
        assert r["flops"] >= p["model_flops_all_chips"] / rep["num_chips"] and r["bytes"] > 0, name
        assert r["bound_s"] == max(r["compute_s"], r["memory_s"]) > 0, name
    step = rep["predicted_step"]
    assert step["step_s"] == pytest.approx(sum(p["roofline"]["bound_s"] for p in rep["programs"].values()))
    assert 0 < step["mfu"] <= 1
    assert "roofline per chip" in out and "implied MFU" in out
    line = [ln for ln in out.splitlines() if ln.startswith('{"plan"')][-1]
    assert json.loads(line)["plan"]["topology"] == "v5p-8"


def test_program_plus_resident_state_over_hbm_fails_clearly():
    with pytest.raises(plan.PlanDoesNotFitError) as e:
        plan.run_plan(_tiny(), "v5p-8", ("g_step",), hbm_bytes=1 << 20, log=None)
    msg = str(e.value)
    assert "g_step does not fit on v5p-8" in msg and "GiB" in msg
    assert "micro_batches_g (now 1" in msg and "remat='full'" in msg and "more chips than 4" in msg


def test_oversized_config_resource_exhausted_from_xla():
    c = _tiny()
    c.data.batch_size = 64
    c.data.max_prompt_tokens = 8192
    c.rollout.max_new_tokens = 8192
    c.rollout.n_samples = 8  # 512 rows x 16k tokens: the f32 attention scores alone are ~2 TiB
    c.model.attention = "xla"  # the dense path's scores (splash, what auto means on TPU, never holds them)
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


def test_g_step_compiles_with_splash_attention_kernels_for_v5p():
    """model.attention=splash (also what auto means for a TPU): the G step's layer body holds the Pallas
    splash kernels (forward, dq, dkv) and compiles for v5p; the xla backend holds none."""
    from gadjax.parallel.rules import use_mesh
    from gadjax.plan.programs import program_specs
    from gadjax.plan.run import make_plan_mesh
    from gadjax.plan.state import build_abstract

    devices = plan.topology_devices(plan.parse_topology("v5p-8"))
    kernels = {}
    for attention in ("splash", "xla"):
        c = _tiny()
        c.model.attention = attention
        mesh = make_plan_mesh(c, devices)
        run = build_abstract(c, mesh)
        with use_mesh(mesh):
            spec = next(s for s in program_specs(c, run) if s.name == "g_step")
            lowered = spec.fn.lower(*spec.args)
            kernels[attention] = lowered.as_text().count("tpu_custom_call")
            if attention == "splash":
                assert lowered.compile().as_text().count("tpu_custom_call") == 3
    assert kernels == {"splash": 3, "xla": 0}


def test_roofline_of_a_matmul_counted_by_hand():
    """One [256, 512] x [512, 1024] bf16 matmul compiled for a v5p chip: XLA's FLOPs are 2 M N K; a loop of
    10 of them is counted once by XLA, and the analytic count restores it in the bound."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from gadjax.plan.roofline import bound, program_bound, step_prediction, xla_cost

    chip = plan.parse_topology("v5p-8").chip
    mesh = Mesh(np.array(plan.topology_devices(plan.parse_topology("v5p-8"))[:1]), ("x",))
    replicated = NamedSharding(mesh, PartitionSpec())
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=replicated)
    m, k, n = 256, 512, 1024
    flops, nbytes = xla_cost(jax.jit(lambda a, b: a @ b).lower(sds(m, k), sds(k, n)).compile())
    assert flops == 2 * m * k * n
    assert nbytes >= 2 * (m * k + k * n + m * n)  # at least the operands and the result, once each
    r = bound(flops, nbytes, chip)
    assert r["compute_s"] == pytest.approx(2 * m * k * n / 459e12)
    assert r["memory_s"] == pytest.approx(nbytes / 2765e9)
    assert r["limit"] == "memory"  # 268 MFLOP over ~MBs: far below v5p's ridge of ~166 FLOP/B
    assert r["ridge"] == pytest.approx(459e12 / 2765e9)

    looped = lambda a, b: jax.lax.fori_loop(0, 10, lambda i, x: x @ b, a)
    sq = sds(k, k)
    loop_flops, loop_bytes = xla_cost(jax.jit(looped).lower(sds(m, k), sq).compile())
    assert loop_flops == 2 * m * k * k  # the body, once
    r = program_bound(loop_flops, loop_bytes, 10 * 2 * m * k * k, 0.0, chip)
    assert r["flops"] == 10 * 2 * m * k * k and r["xla_flops"] == loop_flops
    step = step_prediction({"loop": r}, 10 * 2 * m * k * k, 1, chip)
    assert step["step_s"] == r["bound_s"]
    assert step["mfu"] == pytest.approx(r["compute_s"] / r["bound_s"])


def test_rollout_micro_batches_shrink_the_rollout_program():
    """rollout.micro_batches=4: the plan compiles one chunk of 2 prompts (its KV cache and buffers are a
    quarter), and the roofline's streamed bytes count the weights once per chunk and decode step."""
    reps = {}
    for m in (1, 4):
        c = _tiny()
        c.rollout.micro_batches = m
        reps[m] = plan.run_plan(c, "v5p-8", ("rollout",), log=None)["programs"]["rollout"]
    assert "2 prompts x 2 samples (x 4 chunks)" in reps[4]["what"]
    assert reps[4]["memory"]["temp"] < reps[1]["memory"]["temp"]
    assert reps[4]["memory"]["argument"] < reps[1]["memory"]["argument"]  # the prompt ids of one chunk
    # The streamed-bytes floor: every chunk's decode loop reads the weights again.
    from gadjax.plan.roofline import floor_bytes, rollout_cache_steps, rollout_decode_steps

    c = _tiny()
    sizes = dict(g_params=100, g_opt_state=200, d_params=100, d_opt_state=200, ref_params=100)
    sizes.update(kv_cache=30, kv_cache_decode=10)  # the floor reads what one decode step reads
    steps = rollout_decode_steps(c)  # under the length profile: to the batch's longest row
    assert 1 <= steps <= c.rollout.max_new_tokens - 1
    assert floor_bytes(c, sizes)["rollout"] == steps * (100 + 10)  # float32 compute: weights at full size
    c.rollout.micro_batches = 4
    chunked = rollout_decode_steps(c)  # each chunk runs to its own longest row
    assert chunked >= steps and floor_bytes(c, sizes)["rollout"] == chunked * (100 + 10)
    c.rollout.batching = "continuous"  # the slot queue's iterations (gadjax.rollout.schedule)
    assert floor_bytes(c, sizes, (2,))["rollout"] == rollout_decode_steps(c, (2,)) * (100 + 10)
    # Tail compaction: every iteration still reads the weights, the tail reads fewer slots' caches.
    steps, cache_steps = rollout_decode_steps(c, (2, 1)), rollout_cache_steps(c, (2, 1))
    assert steps == rollout_decode_steps(c, (2,)) and steps / 2 <= cache_steps < steps
    assert floor_bytes(c, sizes, (2, 1))["rollout"] == steps * 100 + cache_steps * 10


def test_continuous_rollout_compiles_with_its_slot_layout():
    """rollout.batching=continuous: the plan compiles the slot program and predicts its decode steps
    under the length profile (gadjax.rollout.schedule); the KV cache is the slots' and the prompts'."""
    reps = {}
    for batching in ("static", "continuous"):
        c = _tiny()
        c.rollout.batching = batching
        reps[batching] = plan.run_plan(c, "v5p-8", ("rollout",), log=None)
    cont, static = reps["continuous"], reps["static"]
    assert "continuous batching, 8 slots" in cont["programs"]["rollout"]["what"]  # half of 8 x 2 rows
    assert cont["rollout"]["slots"] == 8 and static["rollout"]["slots"] is None
    assert cont["rollout"]["tail_slots"] == [4, 2]  # halved while a multiple of the 2 batch shards
    assert cont["rollout"]["decode_steps_under_length_profile"] >= 1
    kv = lambda rep: rep["breakdown_bytes_per_chip"]["kv_cache_decode"]
    assert kv(cont) < kv(static)  # 8 slots of 32 + 16 + 1 columns vs 16 rows of 32 + 16


def test_tiny_lora_compiles_and_trains_less_state_than_full(capsys):
    c = _tiny()
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


def test_tiny_packed_programs_compile_for_the_worst_case():
    """train.packing: ref_logp / d_step / g_step compile with the worst-case micro-batch bucket; their
    predicted time comes from the micro-batches a step under the length profile runs (fewer)."""
    c = _tiny()
    c.train.packing = True
    rep = plan.run_plan(c, "v5p-8", ["ref_logp", "d_step", "g_step"], log=None, profile="cpu")
    lengths = rep["lengths"]["programs"]
    for name in ("ref_logp", "d_step", "g_step"):
        assert "packed: worst case" in rep["programs"][name]["what"], name
        assert f"{lengths[name]['micro_worst_bucket']} micro-batches" in rep["programs"][name]["what"]
        assert lengths[name]["micro_batches"] <= lengths[name]["micro_worst"]
        assert rep["programs"][name]["total_bytes"] <= rep["hbm_bytes_per_chip"]
    assert rep["lengths"]["packing"] is True and "tokens per step under the 'cpu'" in plan.format_report(rep)
