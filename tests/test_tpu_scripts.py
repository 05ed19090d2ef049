"""tpu/*.sh: syntax (bash -n), shellcheck, complete --help texts, and behaviour against a stand-in gcloud.

The stand-in `gcloud` (written per test) records its argv and emulates one TPU worker on this machine:
`tpu-vm ssh --command=C` runs C with `sh -c` in a fake home directory, `tpu-vm scp SRC NAME:DEST` copies
into it. So launch.sh's job really starts detached, writes its per-worker log, reads the teacher key
from the 0600 file push-key wrote, and stops; the real programs (bash, base64, setsid, tail) do the work.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh"))
RUNNABLE = [p for p in SCRIPTS if p.name != "common.sh"]
ZONE = "us-east5-a"


def _flags_parsed(script: Path) -> set[str]:
    """Every flag in the script's `case` patterns, e.g. `--name)` or `-h | --help)`."""
    flags: set[str] = set()
    for line in script.read_text().splitlines():
        m = re.match(r"^\s*((?:-{1,2}[a-z0-9-]+)(?:\s*\|\s*-{1,2}[a-z0-9-]+)*)\)", line)
        if m:
            flags.update(f.strip() for f in m.group(1).split("|"))
    flags.discard("--")
    return flags


def _run(args, env=None, input=None, timeout=60):
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, input=input, timeout=timeout
    )


def test_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"create.sh", "setup.sh", "launch.sh", "logs.sh", "teardown.sh", "common.sh"} <= names
    for p in RUNNABLE:
        assert os.access(p, os.X_OK), f"{p} is not executable"
        assert "set -euo pipefail" in p.read_text(), p


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = _run(["bash", "-n", script])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=TPU)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", RUNNABLE, ids=lambda p: p.name)
def test_help_documents_every_flag(script):
    flags = _flags_parsed(script)
    assert {"--help", "--dry-run"} <= flags and len(flags) >= 5, flags
    r = _run([script, "--help"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: tpu/" + script.name), r.stdout[:80]
    for flag in flags:
        # As a whole word: --name must not be satisfied by --run-name.
        word = rf"(?<![\w-]){re.escape(flag)}(?![\w-])"
        assert re.search(word, r.stdout), f"{script.name}: {flag} undocumented"


# ---------------------------------------------------------------- argument validation

@pytest.mark.parametrize(
    "script, args, message",
    [
        ("create.sh", ["--zone", ZONE, "--accelerator-type", "v5p-8"], "--name is required"),
        ("create.sh", ["--name", "Bad_Name", "--zone", ZONE, "--accelerator-type", "v5p-8"], "lowercase"),
        ("create.sh", ["--name", "a", "--zone", "useast", "--accelerator-type", "v5p-8"], "is not a zone"),
        ("create.sh", ["--name", "a", "--zone", ZONE, "--accelerator-type", "h100"], "is not a type"),
        ("create.sh", ["--name", "a", "--zone", ZONE, "--accelerator-type", "v5p-8", "--spot", "--reserved"],
         "exclusive"),
        ("create.sh", ["--name", "a", "--zone", ZONE, "--accelerator-type", "v5p-8", "--wait"],
         "needs --queued"),
        ("create.sh", ["--name", "a", "--zone", ZONE, "--accelerator-type", "v9z-8"], "pass --version"),
        ("create.sh", ["--name", "--zone", ZONE], "--name needs a value"),
        ("create.sh", ["--bogus"], "unknown argument '--bogus'"),
        ("setup.sh", ["--name", "a", "--zone", ZONE, "--python", "3.10"], "needs Python >= 3.11"),
        ("setup.sh", ["--name", "a", "--zone", ZONE, "--remote-dir", "../etc"], "without '..'"),
        ("setup.sh", ["--name", "a", "--zone", ZONE, "--ref", "main"], "--ref needs --repo-url"),
        ("setup.sh", ["--name", "a", "--zone", ZONE, "--worker", "x"], "'all' or a worker index"),
        ("launch.sh", ["--name", "a", "--zone", ZONE], "no command"),
        ("launch.sh", ["--name", "a", "--zone", ZONE, "--env", "TEACHER_API_KEY=sk-1", "--", "true"],
         "looks like a secret"),
        ("launch.sh", ["--name", "a", "--zone", ZONE, "--key-secret", "s", "--", "true"], "need --key-env"),
        ("launch.sh", ["--name", "a", "--zone", ZONE, "--key-env", "K", "--key-secret", "s", "--key-file",
                       "f", "--", "true"], "exclusive"),
        ("launch.sh", ["--name", "a", "--zone", ZONE, "--stop"], "--stop needs --run-name"),
        ("launch.sh", ["--name", "a", "--zone", ZONE, "--max-restarts", "x", "--", "true"], "--max-restarts"),
        ("launch.sh", ["--name", "a", "--zone", ZONE, "--run-name", "a b", "--", "true"], "--run-name"),
        ("logs.sh", ["--name", "a", "--zone", ZONE], "--run-name is required"),
        ("logs.sh", ["--name", "a", "--zone", ZONE, "--run-name", "r", "--lines", "-3"],
         "must be a non-negative integer"),
        ("teardown.sh", ["--name", "a"], "--zone is required"),
    ],
)
def test_bad_arguments_are_named(script, args, message):
    r = _run([TPU / script, *args, "--dry-run"])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr


def test_missing_gcloud_is_explained(tmp_path):
    # A PATH with only the tools the script needs, so an installed gcloud is out of sight.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "basename"):
        (bindir / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(bindir)}
    r = _run([TPU / "teardown.sh", "--name", "a", "--zone", ZONE, "--yes"], env=env)
    assert r.returncode == 2 and "gcloud not found" in r.stderr


# ---------------------------------------------------------------- dry-run command composition

def test_create_commands():
    r = _run([TPU / "create.sh", "--name", "gad-v5p", "--zone", ZONE, "--accelerator-type", "v5p-64",
              "--spot", "--project=my-proj", "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert ("+ gcloud compute tpus tpu-vm create gad-v5p --zone=us-east5-a --project=my-proj "
            "--accelerator-type=v5p-64 --version=v2-alpha-tpuv5 --spot") in r.stdout
    r = _run([TPU / "create.sh", "--name", "gad-v5p", "--zone", ZONE, "--accelerator-type", "v6e-16",
              "--queued", "--reserved", "--valid-until", "6h", "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert ("+ gcloud compute tpus queued-resources create gad-v5p --zone=us-east5-a --node-id=gad-v5p "
            "--accelerator-type=v6e-16 --runtime-version=v2-alpha-tpuv6e --reserved "
            "--valid-until-duration=6h") in r.stdout


def test_setup_dry_run():
    r = _run([TPU / "setup.sh", "--name", "gad", "--zone", ZONE, "--extras", "tpu,test", "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert re.search(r"\+ gcloud compute tpus tpu-vm scp \S+gadjax-src.tgz gad:gadjax-src.tgz "
                     r"--zone=us-east5-a --worker=all", r.stdout)
    assert "pip install -q -e '.[tpu,test]'" in r.stdout
    assert "uv venv --python 3.11 .venv" in r.stdout
    assert "jax.process_index()" in r.stdout
    assert re.search(r"\+ gcloud compute tpus tpu-vm ssh gad --zone=us-east5-a --worker=all --command=",
                     r.stdout)
    r = _run([TPU / "setup.sh", "--name", "gad", "--zone", ZONE, "--repo-url", "https://example.com/g.git",
              "--ref", "v1", "--dry-run"])
    assert "git clone https://example.com/g.git ~/gadjax" in r.stdout
    assert "checkout v1" in r.stdout
    assert "tpu-vm scp" not in r.stdout


# ---------------------------------------------------------------- end to end with a stand-in gcloud

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stand-in gcloud: records argv, emulates one TPU worker whose home is $FAKE_HOME.
set -euo pipefail
printf '%q ' "$@" >> "$FAKE_GCLOUD_LOG"; echo >> "$FAKE_GCLOUD_LOG"
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]]; then
  for a in "$@"; do
    if [[ $a == --command=* ]]; then cd "$FAKE_HOME" && HOME=$FAKE_HOME exec sh -c "${a#--command=}"; fi
  done
  echo "interactive ssh not emulated" >&2; exit 3
elif [[ "$1 $2 $3 $4" == "compute tpus tpu-vm scp" ]]; then
  dest="$FAKE_HOME/${6#*:}"; cp "$5" "$dest"; exit 0
fi
exit 0
"""


@pytest.fixture
def fake(tmp_path):
    bindir, home = tmp_path / "bin", tmp_path / "home"
    bindir.mkdir()
    (bindir / "gcloud").write_text(FAKE_GCLOUD)
    (bindir / "gcloud").chmod(0o755)
    venv = home / "gadjax" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    (venv / "activate").write_text('export PATH="$HOME/gadjax/.venv/bin:$PATH"\n')
    log = tmp_path / "gcloud.log"
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_HOME": str(home),
           "FAKE_GCLOUD_LOG": str(log)}
    return env, home, log


def _wait_for(path: Path, text: str, timeout: float = 30.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in (content := path.read_text()):
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s: "
                         f"{path.read_text() if path.exists() else '(missing)'}")


def test_launch_logs_stop_with_pushed_key(fake):
    env, home, gcloud_log = fake
    secret = "sk-test-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:20]
    env = {**env, "MY_TEACHER_KEY": secret}
    host = socket.gethostname()
    job = ("import hashlib, os; k = os.environ['MY_TEACHER_KEY']; "
           "print('keyhash', hashlib.sha256(k.encode()).hexdigest(), os.environ['GREETING'], flush=True)")
    r = _run([TPU / "launch.sh", "--name", "gad", "--zone", ZONE, "--run-name", "t1",
              "--env", "GREETING=hi there", "--key-env", "MY_TEACHER_KEY", "--push-key",
              "--", "python", "-c", job], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    logfile = home / "gadjax" / "logs" / "t1" / f"{host}.log"
    content = _wait_for(logfile, f"keyhash {hashlib.sha256(secret.encode()).hexdigest()} hi there")

    key_file = home / ".gadjax" / "secrets" / "MY_TEACHER_KEY"
    assert key_file.read_text() == secret
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    # The value is nowhere but the key file: not in gcloud's argv, the job script, the log or our output.
    job_sh = (home / "gadjax" / "logs" / "t1" / "job.sh").read_text()
    for where, text in [("gcloud argv", gcloud_log.read_text()), ("job.sh", job_sh), ("log", content),
                        ("launch output", r.stdout + r.stderr)]:
        assert secret not in text, where
    assert "--worker=all" in gcloud_log.read_text()

    r = _run([TPU / "logs.sh", "--name", "gad", "--zone", ZONE, "--run-name", "t1", "--worker", "all",
              "--no-follow", "--lines", "5"], env=env)
    assert r.returncode == 0, r.stderr
    assert f"[{host}] keyhash {hashlib.sha256(secret.encode()).hexdigest()}" in r.stdout
    r = _run([TPU / "logs.sh", "--name", "gad", "--zone", ZONE, "--list"], env=env)
    assert f"[{host}] t1" in r.stdout

    # A long job, stopped through --stop: SIGTERM to its process group.
    r = _run([TPU / "launch.sh", "--name", "gad", "--zone", ZONE, "--run-name", "t2", "--", "sleep", "300"],
             env={k: v for k, v in env.items() if k != "MY_TEACHER_KEY"})
    assert r.returncode == 0, r.stderr
    pidfile = home / "gadjax" / "logs" / "t2" / f"{host}.pid"
    _wait_for(pidfile, "\n")
    pid = int(pidfile.read_text())
    os.kill(pid, 0)  # running
    r = _run([TPU / "launch.sh", "--name", "gad", "--zone", ZONE, "--run-name", "t2", "--stop"], env=env)
    assert r.returncode == 0 and "sent SIGTERM" in r.stdout, r.stdout + r.stderr
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # The job is not our child; reap is not ours to do. A zombie shows as state Z.
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("--stop did not end the job")


def test_job_exiting_75_is_resumed_until_it_finishes(fake):
    """Exit 75 (gadjax.train saved a checkpoint on SIGTERM): the job runs the command again with
    --config.resume=true; --max-restarts bounds it."""
    env, home, _ = fake
    host = socket.gethostname()
    job = ("import os, sys; p = os.path.expanduser('~/count'); n = int(open(p).read()) if os.path.exists(p) "
           "else 0; open(p, 'w').write(str(n + 1)); print('attempt', n, sys.argv[1:], flush=True); "
           "sys.exit(75 if n < 2 else 0)")
    r = _run([TPU / "launch.sh", "--name", "gad", "--zone", ZONE, "--run-name", "r1", "--",
              "python", "-c", job, "--config=x"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    log = home / "gadjax" / "logs" / "r1" / f"{host}.log"
    content = _wait_for(log, "exit 0 at")
    assert "attempt 0 ['--config=x']" in content
    assert "attempt 2 ['--config=x', '--config.resume=true']" in content
    assert "restart 2 of 3" in content and "after 2 restart(s)" in content

    (home / "count").unlink()
    r = _run([TPU / "launch.sh", "--name", "gad", "--zone", ZONE, "--run-name", "r2", "--max-restarts", "1",
              "--", "python", "-c", job], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    content = _wait_for(home / "gadjax" / "logs" / "r2" / f"{host}.log", "exit 75 at")
    assert "attempt 1" in content and "attempt 2" not in content


def test_world_readable_key_file_is_refused(fake):
    env, home, _ = fake
    key_file = home / ".gadjax" / "secrets" / "MY_TEACHER_KEY"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("sk-x")
    key_file.chmod(0o644)
    r = _run([TPU / "launch.sh", "--name", "gad", "--zone", ZONE, "--run-name", "t3", "--key-env",
              "MY_TEACHER_KEY", "--", "python", "-c", "print('ran')"], env=env)
    assert r.returncode == 0, r.stderr  # the launch itself succeeds; the job refuses
    log = home / "gadjax" / "logs" / "t3" / f"{socket.gethostname()}.log"
    content = _wait_for(log, "refusing key file")
    assert "mode 644" in content and "ran" not in content


def test_launch_without_setup_fails_clearly(fake):
    env, home, _ = fake
    shutil.rmtree(home / "gadjax" / ".venv")
    r = _run([TPU / "launch.sh", "--name", "gad", "--zone", ZONE, "--", "true"], env=env)
    assert r.returncode != 0 and "run tpu/setup.sh first" in r.stdout + r.stderr


def test_teardown(fake):
    env, _, gcloud_log = fake
    r = _run([TPU / "teardown.sh", "--name", "gad", "--zone", ZONE, "--queued", "--yes", "--async"], env=env)
    assert r.returncode == 0, r.stderr
    assert gcloud_log.read_text().split("\n")[0].split() == [
        "compute", "tpus", "queued-resources", "delete", "gad", "--zone=us-east5-a", "--force", "--quiet",
        "--async"]
    r = _run([TPU / "teardown.sh", "--name", "gad", "--zone", ZONE], env=env, input="")
    assert r.returncode == 2 and "pass --yes" in r.stderr
