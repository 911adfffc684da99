"""What every entry point does the same way: one line for an error, nothing written by a dry run.

Every command of the project (`python -m coordchannels`, its sweeps `-m` such as the replications,
`coordchannels.compare_replication`, the scripts) ends a failure with one line on stderr,

    error: <what is wrong> (<what to do>)

and exit status 1 (130 for Ctrl-C), without a traceback: the messages of the project's own errors
name the file or setting and the way out. An error the project did not foresee is reported the same
way with its type and a pointer to the traceback; `COORDCHANNELS_DEBUG=1` prints the traceback of
any error.

A Hydra app run with `dry_run=true` on the command line is composed with Hydra's own output
switched off (no output folder, no log file), so that the dry run writes nothing anywhere; a
sweep's (`-m`), whose sweeper always saves its `multirun.yaml`, goes to a temporary folder that
is removed when the command ends.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator

DEBUG_ENV = "COORDCHANNELS_DEBUG"
# Overrides that keep Hydra from making its output folder and log file (`make plan` passes them too).
QUIET_HYDRA = {
    "hydra.run.dir": "hydra.run.dir=.",
    "hydra.output_subdir": "hydra.output_subdir=null",
    "hydra/job_logging": "hydra/job_logging=stdout",
}
MULTIRUN = ("-m", "--multirun")


class UserError(RuntimeError):
    """Something the user gave is unusable; the message says what and what to do."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


# The project's errors whose messages name the setting or file and the way out. Known by name, so
# that this module imports nothing of the package and any module may use it.
OWN_ERRORS = {"SettingError", "StageError", "RunConfigError", "LogError", "UserError"}
# Of those, the refusals: a setting or input a stage will not use (not a failure of its work).
REFUSALS = {"SettingError", "StageError", "RunConfigError"}


def _is(exc: BaseException, names: set[str]) -> bool:
    return any(c.__name__ in names and c.__module__.startswith("coordchannels") for c in type(exc).__mro__)


def own_error(exc: BaseException) -> bool:
    return _is(exc, OWN_ERRORS)


def refusal(exc: BaseException) -> bool:
    """Whether `exc` refuses a setting or input (the runner then leaves the stage's log as it was)."""
    return _is(exc, REFUSALS)


def error_line(exc: BaseException) -> str:
    """`error: <what> (<what to do>)` for `exc`; an unforeseen error says how to see where it came from."""
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:  # raised by the OS, not with our message
        if isinstance(exc, FileNotFoundError):
            return f"error: {exc.filename} not found (check the path given)"
        return f"error: {exc.filename}: {exc.strerror} (check the file or folder named)"
    # The project's own errors and the missing-file errors of its stages say what to do themselves.
    if own_error(exc) or isinstance(exc, FileNotFoundError):
        return f"error: {message}"
    if isinstance(exc, ValueError):  # a bad value read from a setting or a file
        return f"error: {message} (check the setting or file named; {DEBUG_ENV}=1 shows where it was raised)"
    return f"error: {type(exc).__name__}: {message} (unexpected; rerun with {DEBUG_ENV}=1 for the traceback)"


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn any error of the block into its one line on stderr and exit 1 (Ctrl-C: exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        print(
            "\ninterrupted; rerun the same command to resume (finished stages and epochs are kept)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        if debugging():
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr, flush=True)
        sys.exit(1)


def reports_errors(fn: Callable) -> Callable:
    """Decorator form of `reported_errors`, for a Hydra task function or a script's `main`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with reported_errors():
            return fn(*args, **kwargs)

    return wrapper


def dry_run(argv: list[str]) -> bool:
    return any(arg.lstrip("+") in ("dry_run=true", "dry_run=True") for arg in argv[1:])


def quiet_dry_run(argv: list[str], sweep_dir: str | None = None) -> list[str]:
    """`argv` with Hydra's output switched off when it asks for a dry run (the user's own values of
    those keys are kept); a sweep's output folder is `sweep_dir` (a temporary folder)."""
    if not dry_run(argv):
        return argv
    quiet = dict(QUIET_HYDRA)
    if sweep_dir is not None and any(arg in MULTIRUN for arg in argv[1:]):
        quiet |= {"hydra.sweep.dir": f"hydra.sweep.dir='{sweep_dir}'", "hydra.sweep.subdir": "hydra.sweep.subdir=."}
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in argv[1:] if "=" in arg}
    return [*argv, *(override for key, override in quiet.items() if key not in given)]


def hydra_entry(main: Callable) -> Callable:
    """Wrap a `@hydra.main` function: overrides Hydra cannot compose end with one line (Hydra's own
    report is several), and a dry run leaves no Hydra output behind."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            sweep = dry_run(sys.argv) and any(arg in MULTIRUN for arg in sys.argv[1:])
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="coordchannels-")) if sweep else None
            sys.argv = quiet_dry_run(sys.argv, scratch)
            with reported_errors():
                check_composes(sys.argv[1:])
            return main(*args, **kwargs)

    return wrapper


def check_composes(overrides: list[str]) -> None:
    """Compose the app's config with `overrides` as Hydra will, raising a UserError that says what
    is wrong when it cannot. A sweep (-m) is composed with its fixed overrides (each of its runs
    is composed by Hydra before it starts); command lines with other Hydra flags (--cfg, ...) are
    left to Hydra."""
    if any(arg.startswith("-") and arg not in MULTIRUN for arg in overrides):
        return
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(arg in MULTIRUN for arg in overrides)
    overrides = [arg for arg in overrides if arg not in MULTIRUN]
    try:
        if multirun:
            parsed = OverridesParser.create().parse_overrides(overrides)
            overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
        with initialize_config_module(config_module="coordchannels.conf", version_base="1.3"):
            compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        raise UserError(hydra_message(exc)) from exc


def hydra_message(exc: Exception) -> str:
    """One line of what Hydra could not compose, and what to do."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    what = lines[0] if lines else type(exc).__name__
    options = [line for line in lines[1:] if "Available options" in line]
    if options:  # an unknown choice of a config group: list the known ones
        known = lines[lines.index(options[0]) + 1 :]
        known = [k for k in known if not k.startswith(("Config search path", "provider="))]
        what = re.sub(r"^In '[^']*': ", "", what)
        return f"{what} (choose one of: {', '.join(known)})"
    cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ is not None else ""
    if "not in struct" in cause:  # an unknown key; Hydra's advice to add it with + would hide a typo
        return f"{what.removesuffix('.')}: {cause} (check its spelling; `--cfg job` prints every setting)"
    return f"{what}{': ' + cause if cause else ''} (write overrides as key=value, lists as [a,b])"
