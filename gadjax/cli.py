"""What every gadjax command line shares: a quiet start, and user errors as one line.

* Quiet start (``quiet_tpu_start``): with libtpu installed (the ``tpu`` extra), jax probes for a TPU when
  its backends start and libtpu prints ``could not determine TPU accelerator type`` / ``E0000 ...
  TPU_WORKER_HOSTNAMES`` and a source trace on every host without one, which reads as a failure. On a host
  with no TPU chip and no TPU runtime configured, we tell libtpu it is a single local host (it stays
  silent, also when ``--compile_only`` loads it to describe a TPU topology) and, when no GPU is visible
  either, set ``JAX_PLATFORMS=cpu`` so jax does not load libtpu at all. A user's own ``JAX_PLATFORMS``
  (or TPU_* runtime variables) always wins, and a TPU VM is left untouched, so it still finds its chips.
* Errors (``run_main``, ``fail``, ``one_line_errors``): a config or input error is one line on stderr,
  ``PROG: message``, and exit status 2; tracebacks are kept for bugs.

This module imports nothing heavy (no jax): the entry points call it before jax starts.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

EXIT_USAGE = 2

# Single local host: what libtpu would read from the TPU VM metadata server. Without a TPU chip these only
# stop libtpu's start-up complaints (the topology --compile_only describes is passed explicitly).
_QUIET_LIBTPU_ENV = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1"}
# Set by a TPU launcher or by hand: a TPU runtime is configured, so we leave libtpu and jax alone.
_TPU_RUNTIME_ENV = (
    "TPU_ACCELERATOR_TYPE",
    "TPU_WORKER_HOSTNAMES",
    "TPU_WORKER_ID",
    "TPU_HOST_BOUNDS",
    "TPU_CHIPS_PER_HOST_BOUNDS",
    "TPU_PROCESS_BOUNDS",
    "TPU_VISIBLE_CHIPS",
    "TPU_NAME",
    "JAX_FORCE_TPU_INIT",
)
_TPU_DEVICES = ("dev/accel*", "dev/vfio/[0-9]*")  # v2-v4 / v5e; v5p / v6e
_GOOGLE_PCI_VENDOR = "0x1ae0"  # what jax._src.hardware_utils looks for on the PCI bus
_GPU_DEVICES = ("dev/nvidia[0-9]*", "dev/nvidiactl", "dev/dxg", "dev/kfd")


def _exists(root: str, patterns: tuple[str, ...]) -> bool:
    return any(glob.glob(os.path.join(root, p)) for p in patterns)


def tpu_hardware_present(root: str = "/") -> bool:
    """True when a TPU chip is attached: /dev/accel*, /dev/vfio/N or a Google device on the PCI bus."""
    if _exists(root, _TPU_DEVICES):
        return True
    for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
        try:
            with open(vendor, encoding="ascii") as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def quiet_start_env(
    environ: Mapping[str, str], *, root: str = "/", libtpu_installed: bool | None = None
) -> dict[str, str]:
    """The variables ``quiet_tpu_start`` would set on this host (empty: nothing to quiet or not ours to)."""
    if libtpu_installed is None:
        libtpu_installed = importlib.util.find_spec("libtpu") is not None
    if not libtpu_installed or any(k in environ for k in _TPU_RUNTIME_ENV) or tpu_hardware_present(root):
        return {}
    env = dict(_QUIET_LIBTPU_ENV)
    if "JAX_PLATFORMS" not in environ and not _exists(root, _GPU_DEVICES):
        env["JAX_PLATFORMS"] = "cpu"  # a GPU host keeps jax's own choice; the TPU probe is quiet anyway
    return env


def quiet_tpu_start() -> dict[str, str]:
    """Keep libtpu quiet on a host without a TPU; call before jax starts its backends. Returns what it set.

    ``os.environ`` carries the choice to child processes; when jax is already imported (its config read
    ``JAX_PLATFORMS`` at import) the platform is also set through ``jax.config``.
    """
    env = quiet_start_env(os.environ)
    for key, value in env.items():
        os.environ[key] = value
    if "JAX_PLATFORMS" in env and "jax" in sys.modules:
        import jax

        if jax.config.jax_platforms is None:
            jax.config.update("jax_platforms", env["JAX_PLATFORMS"])
    return env


# --- errors ----------------------------------------------------------------------------------------


class InputError(ValueError):
    """A bad argument or input file found by a command line: reported as one line, exit status 2."""


# Exception types that mean "the input is wrong", by module. Resolved lazily: a type can only have been
# raised if its module was imported, and importing them all here would import jax.
_USER_ERRORS = (
    ("gadjax.config", "ConfigValidationError"),
    ("gadjax.models.config", "ConfigError"),
    ("gadjax.models.hf_io", "CheckpointError"),
    ("gadjax.data.rows", "DataError"),
    ("gadjax.teacher.config", "TeacherConfigError"),
)


_FILE_ERRORS = FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError


def is_user_error(e: BaseException) -> bool:
    """Whether `e` reports bad input (config, arguments, files) rather than a bug."""
    if isinstance(e, InputError | _FILE_ERRORS):
        return True
    if isinstance(e, ValueError) and str(e).startswith("config."):  # the trainer's errors name the key
        return True
    for module, name in _USER_ERRORS:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(e, getattr(mod, name)):
            return True
    return False


def one_line(message: object) -> str:
    """`message` on one line (library messages sometimes wrap)."""
    return " ".join(str(message).split())


def report(prog: str, message: object) -> int:
    """Print ``PROG: message`` as one line on stderr; returns the exit status for it, 2."""
    print(f"{prog}: {one_line(message)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def fail(prog: str, message: object) -> NoReturn:
    """Print ``PROG: message`` as one line on stderr and exit with status 2."""
    raise SystemExit(report(prog, message))


def run_main(prog: str, main: Callable[[], int | None]) -> int:
    """Run a command line's `main`: user errors and ``SystemExit("message")`` become one line, exit 2.

    In-process callers of the CLIs' ``main`` functions still see the exceptions; this is the process edge.
    """
    try:
        return main() or 0
    except SystemExit as e:
        if isinstance(e.code, str):
            fail(prog, e.code)
        raise
    except Exception as e:
        if is_user_error(e):
            fail(prog, e)
        raise


@contextlib.contextmanager
def input_errors(what: str) -> Iterator[None]:
    """ValueError / OSError while reading or checking an input (`what`: e.g. ``--model PATH``) is an input
    error that names it: reported as one line by ``run_main``."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, OSError) as e:
        raise InputError(f"{what}: {one_line(e)}") from e


def require_paths(*flag_paths: tuple[str, str | None]) -> None:
    """Fail fast (before the slow imports) on input paths that do not exist: ``("--model", path)``;
    local or gs:// (gadjax.paths)."""
    from gadjax import paths

    for flag, path in flag_paths:
        if path is not None and not paths.exists(path):
            raise InputError(f"{flag}: no such file or directory: {path}")


def one_line_errors(parser: argparse.ArgumentParser, prog: str) -> argparse.ArgumentParser:
    """Make `parser` report a usage error as one line (argparse prints the usage block first)."""

    def error(message: str) -> NoReturn:
        fail(prog, f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser


# --- config overrides --------------------------------------------------------------------------------


def register_list_overrides() -> None:
    """Let ``--config.KEY=VALUE`` set list-valued keys (``data.train``): a path, ``a,b`` or a glob.

    ml_collections parses overrides by the field's type and has no parser for lists; this registers one
    (``gadjax.config.parse_path_list``) for every list field. Tuples (buckets, mesh shape) already take
    ``--config.rollout.prompt_buckets=64,128``.
    """
    from absl import flags
    from ml_collections import config_flags

    from gadjax.config import parse_path_list

    class _PathListParser(flags.ArgumentParser):
        def parse(self, argument: Any) -> list[Any]:
            return parse_path_list(argument)

        def flag_type(self) -> str:
            return "list"

    config_flags.register_flag_parser_for_type(list, _PathListParser())
