"""The command line: ``python rnn.py CONFIG [CONFIG ...] [--config FILE] [++key value ...]``.

:func:`main` loads the config, sets up logging, picks the engine class and runs the config's ``task``.
Exit codes: 0 success, 2 bad user input (one line on stderr naming the key, file or value and the fix),
1 internal error (with a traceback), 75 training stopped early on purpose (SIGTERM / SIGUSR1, a time limit) after
saving what a restart resumes from, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import returnn
from returnn.config import Config, declare_options, get_global_config, load_config, set_global_config
from returnn.config_options import import_option_modules
from returnn.errors import EXIT_INTERRUPTED, ConfigError, ReturnnError, RunInterrupted
from returnn.log import log

if TYPE_CHECKING:
    from returnn.torch.engine import Engine

logger = logging.getLogger(__name__)

USAGE = """\
usage: {prog} CONFIG [CONFIG ...] [--config FILE] [++key value ...]

Runs the experiment that the Python config file(s) describe. Later files and '++key value' overrides win over
earlier ones. An override value is read as a Python literal of the kind the config already holds for the key
(write '+-1' for -1); '++include FILE' loads another config file.

The config key 'task' selects what runs (default: train):
{tasks}

Exit codes: 0 success, 2 bad config or data (one line on stderr says what to fix), 1 internal error,
75 training stopped early on purpose (SIGTERM, SIGUSR1, max_wall_time): start the same command again to resume.
"""

TASK_HELP = {
    "train": "train the model, evaluating dev/eval_datasets after each epoch; resumes from the newest checkpoint",
    "eval": "score the loaded checkpoint on dev and eval_datasets, write the scores to the learning_rates file",
    "forward": "run forward_step over the 'forward' dataset (with forward_init_hook / forward_finish_hook)",
    "search": "network dicts: beam search over search_data (default dev) into search_output_file",
    "compute_priors": "network dicts: the output layer's average softmax over 'train' as log priors in output_file",
    "initialize_model": "write a freshly initialized model as epoch-0 checkpoint",
    "cleanup_old_models": "delete old checkpoints according to cleanup_old_models",
    "nop": "load the config and do nothing",
    "config:<name>": "call the function <name> defined in the config",
    "optional-config:<name>": "the same, skipped when the config does not define <name>",
}

declare_options(
    "General",
    {
        "CustomEngine": (
            None,
            "A subclass of returnn.torch.engine.Engine, defined in the config, that runs instead of the Engine "
            "(see the CustomEngine hooks).",
        ),
    },
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"returnn {returnn.__version__}")
        return 0
    try:
        config = load_config(argv)
        log.init_by_config(config)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: one log, not one per process
            log.quiet_non_main_rank(int(os.environ.get("RANK", "0")))
        _log_startup(config)
        return run_task(config)
    except ReturnnError as exc:
        if log.has_file_targets():  # keep the reason in the run's log file as well
            logger.error(f"error: {exc}")
        print(f"returnn: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        if log.has_file_targets():
            logger.warning(f"{exc}")
        print(f"returnn: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("returnn: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a crash: the traceback goes to stderr (exit code 1), and into the run's log files
        log.write_to_files(logging.ERROR, f"crashed:\n{traceback.format_exc().rstrip()}")
        raise
    finally:
        log.close()


def console_main() -> None:
    """Entry point of the ``returnn`` console script."""
    sys.exit(main())


def usage() -> str:
    """The --help text, with the list of tasks, naming the program as it was started."""
    width = max(len(name) for name in TASK_HELP)
    tasks = "\n".join(f"  {name.ljust(width)}  {text}" for name, text in TASK_HELP.items())
    return USAGE.format(prog=program_name(), tasks=tasks)


def program_name(argv0: str | None = None) -> str:
    """How the command line was started: ``rnn.py`` (also ``returnn/rnn.py``), ``python -m returnn`` or ``returnn``
    (the console script); ``rnn.py`` when called from other code."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    base = os.path.basename(argv0)
    if base == "__main__.py" and os.path.basename(os.path.dirname(argv0)) == "returnn":
        return "python -m returnn"
    if base == "returnn":
        return "returnn"
    return argv0 if base == "rnn.py" else "rnn.py"


def init_config(
    config_filename: str | None = None,
    command_line_options: Sequence[str] = (),
    default_config: dict[str, Any] | None = None,
    extra_updates: dict[str, Any] | None = None,
) -> Config:
    """Mainline's set-up of the global config, for scripts that call it: the file and ``++key value`` options are
    read as by the command line, ``default_config`` fills keys that are not set, ``extra_updates`` overrides keys.
    The config becomes the global one (``get_global_config()``, also ``returnn.__main__.config``)."""
    args = ([config_filename] if config_filename else []) + list(command_line_options)
    if args and not args[0].startswith(("-", "+")):
        config = load_config(args)
    else:
        config = Config()
        for filename in config.parse_cmd_args(args):
            config.load_file(filename)
        set_global_config(config)
    for key, value in (default_config or {}).items():
        if key not in config.typed_dict and key not in config.dict:
            config.set(key, value)
    config.update(extra_updates or {})
    return config


def __getattr__(name: str) -> Any:
    if name == "config":  # mainline scripts read returnn.__main__.config after init_config()
        return get_global_config(raise_exception=False)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_task(config: Config) -> int:
    """Run the config's task (config key ``task``)."""
    task = config.value("task")
    if task == "nop" or task.startswith(("config:", "optional-config:")):
        _check_unknown_keys(config)
        if task == "nop":
            logger.info("task=nop: nothing to do")
        else:
            _run_config_function(config, task)
        config.report_unread_keys()
        return 0
    if task not in _ENGINE_TASKS:
        choices = ", ".join(TASK_HELP)
        raise ConfigError(f"config key 'task': unknown task {task!r}; choose one of: {choices}")
    engine_class = get_engine_class(config)
    import torch

    logger.info(f"torch={torch.__version__} threads={torch.get_num_threads()}")
    _check_unknown_keys(config)
    engine = engine_class(config)
    start = time.monotonic()
    getattr(engine, task)()
    config.report_unread_keys()  # a no-op after training, which reports after its first step
    logger.info(f"task={task} finished time={time.monotonic() - start:.1f}s")
    return 0


# each an Engine method
_ENGINE_TASKS = ("train", "eval", "forward", "search", "compute_priors", "initialize_model", "cleanup_old_models")


def get_engine_class(config: Config) -> type[Engine]:
    """The config's ``CustomEngine`` if it defines one (a subclass of Engine), else :class:`Engine`."""
    from returnn.torch.engine import Engine  # imported here, so that --help and --version need no torch import

    custom = config.typed_value("CustomEngine", None)
    if custom is None:
        return Engine
    if not (isinstance(custom, type) and issubclass(custom, Engine)):
        raise ConfigError(
            f"config key 'CustomEngine': expected a subclass of returnn.torch.engine.Engine, got {custom!r}; "
            "write 'class CustomEngine(Engine): ...' with 'from returnn.torch.engine import Engine'"
        )
    return custom


def _check_unknown_keys(config: Config) -> None:
    import_option_modules()  # every declared option is a known key of the check
    config.check_unknown_keys()


def _run_config_function(config: Config, task: str) -> None:
    optional, name = task.split(":", 1)
    func = config.typed_value(name, None)
    if func is None:
        if optional == "optional-config":
            logger.info(f"task={task}: the config defines no {name!r}, skipped")
            return
        raise ConfigError(
            f"task {task!r}: the config defines no function {name!r}; define it, or use 'optional-config:{name}' "
            "to skip the task when it is missing"
        )
    if not callable(func):
        raise ConfigError(f"task {task!r}: config key {name!r} is {type(func).__name__}, not a function")
    func()


def _log_startup(config: Config) -> None:
    logger.info(
        f"returnn {returnn.__version__} starting: python={platform.python_version()} pid={os.getpid()} "
        f"cwd={os.getcwd()} config={','.join(config.files)}"
    )


if __name__ == "__main__":
    sys.exit(main())
