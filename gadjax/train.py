"""gadjax trainer: `python -m gadjax.train --config configs/X.py [--config.key=value ...]`.

The command line. The loop lives in gadjax/trainer/: loop.py (Trainer, the stage loop, preemption and
evaluation), steps.py (one step per stage and its compiled programs), state.py (train states, resume,
save, export), build.py (model, data, optimizer, teacher), guards.py, flops.py, evaluation.py and
preemption.py. Exit status: 0 done, 2 a config or input error, 3 a teacher spending limit, 74 a checkpoint
or export could not be written (a full disk; committed checkpoints are intact), 75 stopped by SIGTERM /
SIGINT after saving a checkpoint (resume with --config.resume=true).
"""

from __future__ import annotations

import logging
import os
import sys

from gadjax.paths import StorageAccessError
from gadjax.storage import STORAGE_ERROR_EXIT_CODE, StorageWriteError
from gadjax.teacher.client import SpendingLimitReached
from gadjax.teacher.errors import TeacherError, TooManyFailedPrompts
from gadjax.trainer.loop import StepHook, Trainer, run
from gadjax.trainer.preemption import PREEMPTED_EXIT_CODE, Preempted
from gadjax.trainer.steps import _Timer

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "SPENDING_LIMIT_EXIT_CODE",
    "TEACHER_FAILURES_EXIT_CODE",
    "STORAGE_ERROR_EXIT_CODE",
    "StepHook",
    "Trainer",
    "_Timer",
    "main",
    "run",
]

SPENDING_LIMIT_EXIT_CODE = 3  # teacher.max_requests / max_total_tokens reached (as gadjax.teacher.collect)
TEACHER_FAILURES_EXIT_CODE = 4  # more than teacher.max_failed_prompts prompts skipped; checkpoint saved


PROG = "gadjax.train"


def main(argv: list[str] | None = None) -> int:
    """The command line. Config and input errors are one line on stderr and exit status 2 (gadjax.cli);
    on a host without a TPU, libtpu is kept quiet."""
    from gadjax import cli

    cli.quiet_tpu_start()  # jax is imported but its backends have not started yet
    from absl import app, flags
    from ml_collections import config_flags

    cli.register_list_overrides()  # --config.data.train=a.jsonl,b.jsonl or a glob
    config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=False)
    flags.DEFINE_bool(
        "compile_only", False, "Lower + compile the programs for --topology and print the plan."
    )
    flags.DEFINE_string("topology", "", "TPU slice or GPU box for --compile_only, e.g. v5p-64 or 8xh100.")

    def _parse_flags(args: list[str]) -> list[str]:
        try:
            return flags.FLAGS(args)
        except flags.Error as e:  # absl would print two lines and exit 1
            cli.fail(PROG, e)
        except (KeyError, AttributeError) as e:  # ml_collections: an override names no config key
            while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(message))
                e = e.args[0]
            cli.fail(PROG, f"--config.KEY=VALUE: unknown key {e.args[0] if e.args else e}")

    def _main(_argv: list[str]) -> None:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("gadjax").setLevel(logging.INFO)
        cfg = flags.FLAGS.config
        if cfg is None:
            cli.fail(PROG, "--config is required, e.g. --config configs/tiny.py")
        try:
            cfg.get("stage")  # a config file that failed to load raises here (ml_collections defers it)
        except OSError as e:
            path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
            cli.fail(PROG, f"--config: {e}" if os.path.isfile(path) else f"--config: no such file: {path}")
        if flags.FLAGS.compile_only:
            from gadjax import plan

            try:
                plan.main(cfg, flags.FLAGS.topology or None)
            except plan.PlanDoesNotFitError as e:  # the plan's verdict, not a usage error
                print(f"gadjax plan: {cli.one_line(e)}", file=sys.stderr)
                sys.exit(1)
            except plan.PlanError as e:
                cli.fail(PROG, e)
            return
        try:
            run(cfg)
        except Preempted as e:
            print(f"gadjax.train: {e}", file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_CODE)
        except SpendingLimitReached as e:
            print(f"gadjax.train: {cli.one_line(e)}", file=sys.stderr)
            sys.exit(SPENDING_LIMIT_EXIT_CODE)
        except TooManyFailedPrompts as e:
            print(f"gadjax.train: {cli.one_line(e)}", file=sys.stderr)
            sys.exit(TEACHER_FAILURES_EXIT_CODE)
        except TeacherError as e:  # the endpoint refuses every prompt (HTTP 401 / 403 / 404, no key)
            print(f"gadjax.train: teacher: {cli.one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except (StorageWriteError, StorageAccessError) as e:  # a full disk, a bucket we cannot use
            print(f"gadjax.train: {cli.one_line(e)}", file=sys.stderr)
            sys.exit(STORAGE_ERROR_EXIT_CODE)

    return cli.run_main(PROG, lambda: app.run(_main, argv=argv or sys.argv, flags_parser=_parse_flags))


if __name__ == "__main__":
    main()
