"""The command lines as a new user meets them (issue 18): list keys from the command line, a quiet start
on a host without a TPU, and config / input errors as one line on stderr with exit status 2."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from gadjax import cli
from gadjax.config import parse_path_list

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
ASSETS = os.path.join(REPO, "configs", "tiny_assets")
# What libtpu prints when it starts on a host without a TPU.
LIBTPU_NOISE = (
    "could not determine TPU",
    "TPU_WORKER_HOSTNAMES",
    "TPU_ACCELERATOR_TYPE",
    "InitGoogle",
    "Source Location Trace",
    "libtpu",
    "E0000",
)
# A short seqkd run of the tiny config: no rollouts, no export.
SHORT_RUN = (
    "--config.stage=seqkd",
    "--config.train.steps=1",
    "--config.export.hf=false",
    "--config.metrics.tensorboard=false",
)


def run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy() if env is None else env,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a CLI that rejected its input with exit status 2."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- list keys from the command line ------------------------------------------------------------------


def test_parse_path_list_takes_a_path_commas_a_glob_or_a_list(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.parquet"):
        (tmp_path / name).write_text("")
    a, b, c = (str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "c.parquet"))
    assert parse_path_list(a) == [a]
    assert parse_path_list(f"{a}, {c}") == [a, c]
    assert parse_path_list(str(tmp_path / "*.jsonl")) == [a, b]  # sorted, like a shell
    assert parse_path_list(f"{c},{tmp_path}/*.jsonl") == [c, a, b]
    missing = str(tmp_path / "nothing-*.jsonl")
    assert parse_path_list(missing) == [missing]  # kept: validate names it
    assert parse_path_list(f"['{a}', '{c}']") == [a, c]
    assert parse_path_list([a]) == [a] and parse_path_list("") == []
    with pytest.raises(ValueError, match="not a list literal"):
        parse_path_list("[oops")


def _data_files(tmp_path) -> tuple[str, str, str]:
    """a.jsonl and c.jsonl (halves of the tiny corpus) and b.parquet (the same rows as prompt/response)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(os.path.join(ASSETS, "train.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(lines[:48]))
    (data / "c.jsonl").write_text("".join(lines[48:]))
    rows = [json.loads(line) for line in lines]
    table = pa.table(
        {"prompt": [r["messages"][-1]["content"] for r in rows], "response": [r["response"] for r in rows]}
    )
    pq.write_table(table, data / "b.parquet")
    return str(data / "a.jsonl"), str(data / "b.parquet"), str(data / "c.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("form", ["path", "comma", "glob", "parquet"])
def test_train_takes_data_files_from_the_command_line(tmp_path, form):
    a, b, c = _data_files(tmp_path)
    value, expected = {
        "path": (a, [a]),
        "comma": (f"{a},{c}", [a, c]),
        "glob": (os.path.join(os.path.dirname(a), "*.jsonl"), [a, c]),
        "parquet": (b, [b]),
    }[form]
    run_dir = tmp_path / "run"
    args = ["-m", "gadjax.train", "--config", TINY, *SHORT_RUN, f"--config.run_dir={run_dir}"]
    proc = run([*args, f"--config.data.train={value}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "config.json") as f:
        assert json.load(f)["data"]["train"] == expected
    assert os.path.getsize(run_dir / "metrics.jsonl") > 0


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.data.train={tmp}/a.jsonl,{tmp}/missing.jsonl",
            r"config.data.train: '.*/missing.jsonl' does not exist",
        ),
        (
            "--config.data.train={tmp}/a.jsonl,{tmp}/b.parquet",
            r"config.data.train: mixes jsonl and parquet files; one kind per run",
        ),
        ("--config.data.train={tmp}/none-*.jsonl", r"config.data.train: '.*/none-\*.jsonl' does not exist"),
        ("--config.rollout.n_samples=0", r"config.rollout.n_samples: must be a positive integer \(got 0\)"),
        ("--config.rollout.n_samples=many", r"--config.rollout.n_samples=many: invalid literal for int"),
        ("--config.rollout.n_sample=3", r"unknown key 'n_sample' Did you mean \"n_samples\""),
        ("--topology=v5p-12 --compile_only", r"topology 'v5p-12': unknown v5p slice size"),
        (
            "--config.mesh.shape=(3,-1,1)",
            r"config.mesh.shape: \(3,-1,1\) needs a multiple of 3 devices, found 8; "
            r"set --config.mesh.shape='\(1,-1,1\)' to use every device found",
        ),
    ],
)
def test_train_config_errors_are_one_line(tmp_path, override, message):
    import re

    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.parquet").write_text("")
    args = override.format(tmp=tmp_path).split()
    line = one_error_line(run(["-m", "gadjax.train", "--config", TINY, *args], timeout=120))
    assert line.startswith("gadjax.train: ") and re.search(message, line), line


def test_train_without_a_usable_config_file_is_one_line(tmp_path):
    line = one_error_line(run(["-m", "gadjax.train"], timeout=120))
    assert line == "gadjax.train: --config is required, e.g. --config configs/tiny.py"
    missing = str(tmp_path / "nope.py")
    line = one_error_line(run(["-m", "gadjax.train", "--config", missing], timeout=120))
    assert line == f"gadjax.train: --config: no such file: {missing}"


# --- one line, exit status 2: the other command lines ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> str:
    """A tiny random Llama directory without tokenizer files."""
    pytest.importorskip("torch")
    from tests.models.hf_fixtures import make_hf_model

    path = str(tmp_path_factory.mktemp("tiny_hf") / "llama")
    make_hf_model("llama", path)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "evaluate-missing-model",
        "evaluate-bad-value",
        "evaluate-bad-marker",
        "evaluate-bad-flag",
        "evaluate-no-tokenizer",
        "convert-missing-src",
        "convert-bad-source",
        "convert-bad-tokenizer",
        "serve-missing-model",
        "serve-bad-value",
        "serve-no-tokenizer",
        "collect-missing-prompts",
        "collect-bad-value",
        "collect-missing-flag",
    ],
)
def test_cli_input_errors_are_one_line_with_status_2(tmp_path, tiny_hf, case):
    data = os.path.join(ASSETS, "test.jsonl")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "gpt2"}')
    nope = str(tmp_path / "nope")
    collect = ["-m", "gadjax.teacher.collect", "--out", str(tmp_path / "o.jsonl"), "--no-progress"]
    collect += ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    cases = {
        "evaluate-missing-model": (
            ["-m", "gadjax.evaluate", "--model", nope, "--data", data],
            "--model: no such",
        ),
        "evaluate-bad-value": (
            ["-m", "gadjax.evaluate", "--model", tiny_hf, "--data", data, "--batch-size", "0"],
            "batch_size=0: must be >= 1",
        ),
        "evaluate-bad-marker": (
            ["-m", "gadjax.evaluate", "--model", tiny_hf, "--data", data, "--marker", "(oops"],
            "--marker: marker '(oops' is not a valid regular expression",
        ),
        "evaluate-bad-flag": (
            ["-m", "gadjax.evaluate", "--model", tiny_hf, "--data", data, "--top-p", "x"],
            "argument --top-p: invalid float value: 'x'",
        ),
        "evaluate-no-tokenizer": (
            ["-m", "gadjax.evaluate", "--model", tiny_hf, "--data", data],
            f"--model {tiny_hf}: ",
        ),
        "convert-missing-src": (["-m", "gadjax.convert", nope, str(tmp_path / "o")], "SRC: no such file"),
        "convert-bad-source": (
            ["-m", "gadjax.convert", str(tmp_path / "bad"), str(tmp_path / "o")],
            "unsupported model_type 'gpt2'",
        ),
        "convert-bad-tokenizer": (
            ["-m", "gadjax.convert", tiny_hf, str(tmp_path / "o"), "--tokenizer", tiny_hf],
            f"--tokenizer {tiny_hf}: no tokenizer files",
        ),
        "serve-missing-model": (["-m", "gadjax.serve", "--model", nope], "--model: no such file"),
        "serve-bad-value": (
            ["-m", "gadjax.serve", "--model", tiny_hf, "--max-batch", "0"],
            "--max-batch must",
        ),
        "serve-no-tokenizer": (
            ["-m", "gadjax.serve", "--model", tiny_hf, "--port", "0"],
            f"--model {tiny_hf}: ",
        ),
        "collect-missing-prompts": ([*collect, "--prompts", nope], "collect: bad prompts: "),
        "collect-bad-value": (
            [*collect, "--prompts", data, "--concurrency", "0"],
            "concurrency: must be >= 1 (got 0)",
        ),
        "collect-missing-flag": (
            ["-m", "gadjax.teacher.collect", "--prompts", data],
            "the following arguments are required: --out",
        ),
    }
    args, expected = cases[case]
    line = one_error_line(run(args, timeout=180))
    assert expected in line, line


def test_run_main_turns_user_errors_into_one_line_and_leaves_bugs_alone(capsys):
    from gadjax.config import ConfigValidationError

    def raiser(e: BaseException):
        def main() -> int:
            raise e

        return main

    for e in (
        ConfigValidationError("config.x: bad"),
        cli.InputError("--model m:\n  unreadable"),
        FileNotFoundError(2, "No such file or directory", "f.jsonl"),
        ValueError("config.run_dir: already holds checkpoints"),
        SystemExit("--judge-url needs --judge-model"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main("prog", raiser(e))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("prog: "), err
    with pytest.raises(ValueError, match="a bug"):
        cli.run_main("prog", raiser(ValueError("a bug")))
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main("prog", raiser(SystemExit(0)))
    assert exit_info.value.code == 0 and capsys.readouterr().err == ""


# --- quiet start ---------------------------------------------------------------------------------------


def _fake_host(root, *paths: str, pci_vendor: str | None = None) -> str:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text("")
    if pci_vendor:
        dev = root / "sys/bus/pci/devices/0000:00:04.0"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(pci_vendor + "\n")
    return str(root)


def test_quiet_start_env_leaves_tpus_gpus_and_the_users_choice_alone(tmp_path):
    quiet = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1"}
    bare = _fake_host(tmp_path / "cpu")
    assert cli.quiet_start_env({}, root=bare, libtpu_installed=True) == {**quiet, "JAX_PLATFORMS": "cpu"}
    assert cli.quiet_start_env({}, root=bare, libtpu_installed=False) == {}  # nothing prints without libtpu
    # The user's JAX_PLATFORMS wins; libtpu, when --compile_only loads it, is still kept quiet.
    assert cli.quiet_start_env({"JAX_PLATFORMS": "cuda"}, root=bare, libtpu_installed=True) == quiet
    # A GPU host keeps jax's own platform choice.
    gpu = _fake_host(tmp_path / "gpu", "dev/nvidia0", "dev/nvidiactl")
    assert cli.quiet_start_env({}, root=gpu, libtpu_installed=True) == quiet
    # A TPU VM (chips in /dev or on the PCI bus) or a configured TPU runtime: untouched.
    for tpu in (
        _fake_host(tmp_path / "v4", "dev/accel0"),
        _fake_host(tmp_path / "v5p", "dev/vfio/0"),
        _fake_host(tmp_path / "pci", pci_vendor="0x1ae0"),
    ):
        assert cli.tpu_hardware_present(tpu)
        assert cli.quiet_start_env({}, root=tpu, libtpu_installed=True) == {}
    assert not cli.tpu_hardware_present(_fake_host(tmp_path / "other", pci_vendor="0x10de"))
    assert cli.quiet_start_env({"TPU_ACCELERATOR_TYPE": "v5p-8"}, root=bare, libtpu_installed=True) == {}


def _no_tpu_env() -> dict[str, str]:
    """This process's environment as a user's shell on a laptop would have it: no JAX_PLATFORMS, no TPU_*,
    one CPU device (not the tests' 8 emulated ones)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_") and k != "JAX_PLATFORMS"}
    env.pop("JAX_FORCE_TPU_INIT", None)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("device_count=8", "device_count=1")
    return env


@pytest.mark.slow
def test_clis_start_quietly_on_a_host_without_a_tpu(tmp_path, tiny_hf):
    if cli.tpu_hardware_present():
        pytest.skip("this host has a TPU: libtpu is meant to start here")
    env = _no_tpu_env()
    proc = run(["-m", "gadjax.convert", tiny_hf, str(tmp_path / "converted")], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [m for m in LIBTPU_NOISE if m in proc.stderr], proc.stderr[-3000:]

    # configs/tiny.py as it is, on one device (its mesh takes whatever devices there are)
    args = ["-m", "gadjax.train", "--config", TINY, *SHORT_RUN, "--config.train.steps=2"]
    proc = run([*args, f"--config.run_dir={tmp_path / 'run'}"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [m for m in LIBTPU_NOISE if m in proc.stderr], proc.stderr[-3000:]
    assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in proc.stderr, proc.stderr[-3000:]
    # a mesh for more devices than the laptop has: one line naming the shape, the count and the fix
    proc = run([*args, "--config.mesh.shape=(2,-1,2)", f"--config.run_dir={tmp_path / 'run2'}"], env=env)
    line = one_error_line(proc)
    assert line == (
        "gadjax.train: config.mesh.shape: (2,-1,2) needs a multiple of 4 devices, found 1; "
        "set --config.mesh.shape='(1,-1,1)' to use every device found"
    ), line

    if importlib.util.find_spec("libtpu") is None:
        return  # --compile_only needs the tpu extra
    proc = run(["-m", "gadjax.train", "--config", TINY, "--compile_only", "--topology", "v5p-8"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [m for m in LIBTPU_NOISE if m in proc.stderr], proc.stderr[-3000:]
    plan = json.loads(proc.stdout.strip().splitlines()[-1])["plan"]
    assert plan["device_kind"] == "TPU v5" and plan["num_chips"] == 4
