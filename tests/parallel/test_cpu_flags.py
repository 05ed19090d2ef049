"""gadjax.parallel.cpu_flags: the XLA_FLAGS for emulated CPU devices."""

from gadjax.parallel.cpu_flags import NO_COLLECTIVE_REORDER_FLAG, with_cpu_devices


def test_device_count_is_replaced_and_other_flags_kept():
    flags = with_cpu_devices("--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8", 3)
    assert flags.split() == [
        "--xla_dump_to=/tmp/x",
        NO_COLLECTIVE_REORDER_FLAG,
        "--xla_force_host_platform_device_count=3",
    ]


def test_one_device_needs_no_collective_fix_and_a_users_choice_is_kept():
    assert with_cpu_devices("", 1) == "--xla_force_host_platform_device_count=1"
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    assert with_cpu_devices(mine, 8).split() == [mine, "--xla_force_host_platform_device_count=8"]


def test_the_test_session_runs_with_the_fix():
    import os

    assert NO_COLLECTIVE_REORDER_FLAG in os.environ["XLA_FLAGS"].split()
