"""The ``landseg`` command line.

User errors (bad config, data or output folder) print one line per problem and exit with
code 2, without a traceback unless ``-v`` is given. Subcommands import their heavy modules
lazily so that ``landseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import select
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from landseg import __version__
from landseg.config.overrides import add_overrides_argument
from landseg.core.errors import LandsegError, StopRequested
from landseg.core.signals import (
    EARLY_STOP_SIGNALS,
    EarlyStop,
    EarlyStops,
    TerminateAsInterrupt,
    Terminated,
    exit_code,
    signal_name,
)

log = logging.getLogger("landseg")

#: Modules that add subcommands: each has ``register(add)`` where ``add(name, handler, help)``
#: returns the new subparser. They import their heavy dependencies inside their handlers.
COMMAND_MODULES = ("landseg.cli.cv", "landseg.cli.predict", "landseg.cli.tune")

#: The commands that start a run or a job (they honour EARLY_STOP_SIGNALS while starting).
EARLY_STOP_COMMANDS = ("train", "cv", "tune", "predict")

#: The exit status when stdout's reader went away: 128 + SIGPIPE, what a shell reports for
#: any Unix tool that a closed pipe ended (``yes | head``), so ``set -o pipefail`` sees it.
STDOUT_CLOSED = 141


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, required=True, help="JSON or YAML config")
    add_overrides_argument(parser)


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the plan of the command the config is for: ``train``; ``cv``, for a config with
    ``cross_validation``; ``tune``, for one with ``search`` too.

    The plan is built by the function that command builds it with, so validate refuses what
    the command would refuse, in the same order, with the same lines, and writes nothing.
    """
    from landseg.planning.prepare import read_source

    device_check = not args.no_device_check
    raw, _ = read_source(args.config, args.overrides)
    plan: Any
    if raw.get("search") is not None:
        from landseg.tuning.search import plan_tune

        plan = plan_tune(args.config, args.overrides, device_check=device_check)
    elif raw.get("cross_validation") is not None:
        from landseg.jobs.cv_plan import plan_cv

        plan = plan_cv(args.config, args.overrides, device_check=device_check, dry_run=True)
    else:
        from landseg.planning.run_plan import plan_train

        plan = plan_train(args.config, args.overrides, device_check=device_check)
    print(f"{args.config}: valid")
    for line in plan.describe():
        print(f"  {line}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from landseg.callbacks.progress import quiet_known_noise
    from landseg.planning.run_plan import prepare_train
    from landseg.training.run import resume_from_checkpoint, train

    quiet_known_noise()
    if args.resume is not None:
        run_dir = resume_from_checkpoint(args.resume, args.overrides)
    else:
        # the run itself is planned by global rank 0 inside train (plan_run), as validate does
        prepared = prepare_train(args.config, args.overrides)
        run_dir = train(prepared.config, prepared.summary)
    from landseg.launch.cluster import global_rank_zero

    if global_rank_zero():
        from landseg.loggers.tensorboard import tensorboard_command
        from landseg.runs.folder import RunFolder

        print(f"run folder: {run_dir}")
        if RunFolder(run_dir).tensorboard.is_dir():
            print(f"TensorBoard: {tensorboard_command(run_dir.parent.parent)}")
    return 0


def cmd_tiles(args: argparse.Namespace) -> int:
    """Cut the grid windows of the config's scene rows into ODEON's tiles (landseg.data.tiling)."""
    from landseg.data.tiling import write_tiles
    from landseg.planning.prepare import prepare

    prepared = prepare(args.config, args.overrides, device_check=False)
    counts = write_tiles(prepared.config, prepared.summary, args.output)
    for split, count in counts.items():
        print(f"{split}: {count} tiles, {args.output / f'{split}.csv'}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from landseg.config.schema import LandsegConfig

    print(json.dumps(LandsegConfig.model_json_schema(), indent=2))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from landseg.data.demo import demo_data_command

    config_path = demo_data_command(args.folder, args.tiles, args.size, args.seed)
    print(f"demo dataset written; config: {config_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landseg",
        description="Train semantic-segmentation models on remote-sensing rasters "
        "from one config file.",
    )
    parser.add_argument("--version", action="version", version=f"landseg {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging and full tracebacks"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str):
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    train = add("train", cmd_train, "train a model from a config file (ODEON's train tool)")
    train.add_argument("-c", "--config", type=Path, help="JSON or YAML config")
    add_overrides_argument(train)
    train.add_argument("--resume", type=Path, metavar="CKPT", help="resume from a checkpoint alone")

    validate = add("validate", cmd_validate, "check a config and its data, then exit")
    _add_config_args(validate)
    validate.add_argument(
        "--no-device-check",
        action="store_true",
        help="do not check that the GPUs (or other devices) named exist on this machine, "
        "for a config written on a login node for the compute nodes",
    )
    tiles = add("tiles", cmd_tiles, "cut the scene rows' grid windows into ODEON's tiles")
    _add_config_args(tiles)
    tiles.add_argument("--output", type=Path, required=True, help="a new or empty folder")
    add("schema", cmd_schema, "print the JSON Schema of the config (for editors)")
    demo = add("demo-data", cmd_demo_data, "write a small generated dataset and demo config")
    demo.add_argument("folder", type=Path)
    demo.add_argument("--tiles", type=int, default=48, help="number of tiles (default 48)")
    demo.add_argument("--size", type=int, default=64, help="tile size in pixels (default 64)")
    demo.add_argument("--seed", type=int, default=0)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(add)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record, not the one of the first call.

    ``main`` may run many times in one process (tests, notebooks, a job runner) with
    ``sys.stderr`` replaced in between; a handler bound once would write to a stale stream.
    """

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; sys.stderr wins
        pass


def _console_logging(verbose: bool) -> None:
    """landseg's own messages on stderr (Lightning prints its own)."""
    logger = logging.getLogger("landseg")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _stdout_gone() -> bool:
    """Whether stdout's reader has gone (``landseg schema | head``), not some other pipe."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no descriptor
        return True  # cannot tell: assume stdout, as Python's own recipe does
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _quiet_exit_on_closed_stdout() -> int:
    """Point stdout at /dev/null (what is still buffered goes nowhere, without a second
    BrokenPipeError at the interpreter's exit) and return SIGPIPE's status."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's capture)
        pass
    return STDOUT_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``landseg`` command; returns its exit status.

    User errors: one line each on stderr, status 2 (with ``-v`` the traceback instead, and
    the same status, so that a script's check of it holds either way). When the
    reader of stdout goes away (``landseg cv status JOB | head -1``), the command stops
    quietly, without a traceback, with status 141 (128 + SIGPIPE) as a Unix tool killed by
    the closed pipe would; a broken pipe that is not stdout's is an error like any other.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.config is None and args.resume is None:
        parser.error("train needs -c CONFIG or --resume CKPT")
    if args.command == "train" and args.config is not None and args.resume is not None:
        parser.error(
            "train takes -c CONFIG or --resume CKPT, not both: a resumed run keeps its own "
            "config (change what may change with --set)"
        )
    _console_logging(args.verbose)
    starting: EarlyStops | TerminateAsInterrupt = (
        EarlyStops(EARLY_STOP_SIGNALS)
        if args.command in EARLY_STOP_COMMANDS
        else TerminateAsInterrupt()  # no resumable point: SIGTERM cleans up as Ctrl-C does
    )
    try:
        with starting:
            status = args.handler(args)
        sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        return _quiet_exit_on_closed_stdout()
    except LandsegError as error:
        if args.verbose:  # the traceback, and the same status as without -v
            traceback.print_exc()
            return error.exit_code
        for line in error.problems:
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
    except Terminated:
        print("interrupted: SIGTERM", file=sys.stderr)
        return exit_code(Terminated.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # a file or folder the command could not read or write (permissions, a folder where
        # a file was expected, a full disk): every write is atomic, so nothing was half made
        if error.filename is None:
            raise
        if args.verbose:
            traceback.print_exc()
        else:
            print(f"error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except EarlyStop as early:
        return _stopped_while_starting(early.signum)
    except StopRequested as stop:
        if stop.requeue:
            from landseg.launch.cluster import requeue_slurm_job

            requeued, line = requeue_slurm_job()
            then = "" if requeued else f"; {_how_to_continue(args, stop)}"
            print(f"interrupted: {stop}; {line}{then}", file=sys.stderr)
        else:
            print(f"interrupted: {stop}; {_how_to_continue(args, stop)}", file=sys.stderr)
        return stop.exit_code


def _os_error_line(error: OSError) -> str:
    """``path: reason`` (``source -> destination: reason`` for a rename)."""
    where = str(error.filename)
    if error.filename2 is not None:
        where += f" -> {error.filename2}"
    return f"{where}: {error.strerror or error}"


def _stopped_while_starting(signum: int) -> int:
    """A stop signal before the run or job began: nothing was written; SLURM's SIGUSR1
    requeues the job as a stopped run would (``slurm_requeue`` is on by default)."""
    from landseg.launch.cluster import requeue_slurm_job, requeue_wanted

    then = "run the same command again"
    if requeue_wanted(signum, True):
        requeued, line = requeue_slurm_job()
        then = line if requeued else f"{line}; {then}"
    print(f"interrupted: {signal_name(signum)} while starting; {then}", file=sys.stderr)
    return exit_code(signum)


def _how_to_continue(args: argparse.Namespace, stop: StopRequested) -> str:
    """The command that continues what a stop signal interrupted."""
    if args.command != "train":
        return "run the same command again to continue"
    from landseg.runs.folder import RunFolder

    run = stop.run
    checkpoint = stop.checkpoint or (RunFolder(run).latest_checkpoint() if run else None)
    if checkpoint is None:
        return "nothing was checkpointed yet: run the same command again to start afresh"
    return f"continue with: landseg train --resume {checkpoint}"


if __name__ == "__main__":
    sys.exit(main())
