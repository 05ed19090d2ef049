"""XLA flags for emulating several devices on one CPU host (the tests, the CPU demo, multi-process CPU
jobs). Pure string work: it must run before jax is imported, so it imports nothing from jax."""

from __future__ import annotations

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

# XLA:CPU runs a program's independent thunks concurrently, and with its default (concurrency-optimized)
# scheduler two independent collectives can start in a different order on different emulated devices and
# wait for each other forever: seen in the packed D step, 7 devices inside a collective-permute and the
# eighth inside an all-gather, until XLA aborted the process. Measured on 2 busy cores: that step hung
# within 30 executions with the default scheduler; with this flag, 800 executions ran without a hang.
# It only changes XLA:CPU's schedule (TPU and GPU programs are untouched).
NO_COLLECTIVE_REORDER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def with_cpu_devices(flags: str, count: int) -> str:
    """``flags`` (an XLA_FLAGS value) emulating ``count`` CPU devices, with any device count already in it
    replaced and the collective-order fix added when the count is above one."""
    kept = [f for f in flags.split() if not f.startswith(DEVICE_COUNT_FLAG)]
    if count > 1 and not any(f.startswith(NO_COLLECTIVE_REORDER_FLAG.split("=")[0]) for f in kept):
        kept.append(NO_COLLECTIVE_REORDER_FLAG)
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])
