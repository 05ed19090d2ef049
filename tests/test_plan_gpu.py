"""The compile-only plan for a GPU box (gadjax/plan/gpu.py): box names, the memory budget JAX gets, and
configs/tiny.py's G step compiled by XLA's TPU compiler (the reference nobody here wrote) for as many
chips as GPUs, checked against the GPU's memory and timed with its roofline."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from gadjax.plan import PlanDoesNotFitError, PlanError
from gadjax.plan.gpu import GPUS, GpuBox, is_gpu_box, mem_fraction_from_env, parse_gpu_box

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="the compile-only plan needs the tpu extra (libtpu)"
)


def test_gpu_box_names_and_budget():
    box = parse_gpu_box("8xH100", mem_fraction=0.95)
    assert (box.count, box.gpu, box.proxy_topology) == (8, GPUS["h100"], "v5p-16")
    assert box.usable_bytes == int(81559 * (1 << 20) * 0.95)
    assert is_gpu_box("8xh200") and not is_gpu_box("v5p-16") and not is_gpu_box("h100-8")
    with pytest.raises(PlanError, match="not 3"):
        parse_gpu_box("3xh100")
    with pytest.raises(PlanError, match="expected COUNTxKIND"):
        parse_gpu_box("8xv100")


def test_mem_fraction_is_read_as_jax_reads_it():
    assert mem_fraction_from_env({}) == 0.75  # jax's default preallocation
    assert mem_fraction_from_env({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}) == 0.9
    for bad in ("lots", "0", "1.5"):
        with pytest.raises(PlanError, match="XLA_PYTHON_CLIENT_MEM_FRACTION"):
            mem_fraction_from_env({"XLA_PYTHON_CLIENT_MEM_FRACTION": bad})


def test_the_gpu_config_offers_7b_with_the_papers_batch(monkeypatch):
    from gadjax.plan import model_config_of

    monkeypatch.setenv("GADJAX_GPU_MODEL", "7b")
    spec = importlib.util.spec_from_file_location("gpu_cfg_for_test", os.path.join(ROOT, "configs", "gpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    mc = model_config_of(c)
    assert (mc.hidden_size, mc.num_layers, mc.vocab_size) == (3584, 28, 152064)
    assert (c.data.batch_size, c.rollout.n_samples, c.data.max_prompt_tokens, c.rollout.max_new_tokens) == (
        256,
        8,
        2048,
        1536,
    )
    assert tuple(c.mesh.shape) == (1, -1, 1) and c.plan.topology == "8xh100"


@needs_libtpu
@pytest.mark.slow
def test_tiny_g_step_planned_for_four_gpus(capsys):
    from gadjax.plan import main
    from gadjax.plan.gpu import run_gpu_plan

    c = tiny.get_config()
    rep = run_gpu_plan(c, GpuBox("4xh100", 4, GPUS["h100"], 0.5), ("g_step",), log=None)
    assert rep["topology"] == "4xh100" and rep["num_chips"] == 4
    assert rep["hbm_bytes_per_chip"] == rep["gpu"]["usable_bytes"] == int(GPUS["h100"].memory_bytes * 0.5)
    g = rep["programs"]["g_step"]
    assert 0 < g["total_bytes"] < rep["hbm_bytes_per_chip"]
    roof = g["roofline"]  # the H100's peak and bandwidth, not the proxy TPU's
    assert roof["compute_s"] == pytest.approx(roof["flops"] / 989e12)
    assert roof["memory_s"] == pytest.approx(roof["bytes"] / 3.35e12)
    # A budget smaller than the program: the verdict names the GPU box, not the proxy slice.
    tight = GpuBox("4xh100", 4, GPUS["h100"], 2 * g["total_bytes"] / 3 / GPUS["h100"].memory_bytes)
    with pytest.raises(PlanDoesNotFitError, match=r"g_step does not fit on 4xh100 \(usable"):
        run_gpu_plan(c, tight, ("g_step",), log=None)
    # The CLI entry (also `gadjax.train --compile_only --topology 4xh100`) prints what the numbers are.
    main(c, "4xh100", ("g_step",))
    out = capsys.readouterr().out
    assert "GPU box 4xh100: 4 x H100 80GB (SXM)" in out and "keep >= 10% headroom" in out
