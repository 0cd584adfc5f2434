"""``python -m reproduce <command>``: one module per subcommand, each with its arguments
(``add_parser``) and its entry point (``run``); ``common`` holds what several share (the
parser class, the option groups built from ``options.OPTIONS``, the checks of device, disk
space and resolution, exit codes).

Every user mistake is found before any file is written and reported as one line on stderr
with exit code 2 (``UserError``). Exit codes: 0 done (completed, diverged, or nothing to do),
1 failed (infrastructure or a bug), 2 bad input, 75 interrupted or busy (temporary: run the
same command again to resume).

Nothing heavy is imported at start-up: torch, the data and the training code are imported by
the functions that use them, so ``--help`` and ``status`` answer in well under two seconds
(``tests/test_cli_startup.py``). A refused ``train`` or ``matrix`` still loads torch and the
data before its config is checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Sequence

from .. import envvars
from ..errors import UserError
from . import bench, fetch_weights, figures, gpu_check, matrix, prepare_data, report, status, train
from .common import (
    EXECUTORS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SUBPARSERS,
    Parser,
    check_text_arguments,
)
from .matrix import parse_packing

__all__ = ["COMMANDS", "EXECUTORS", "SUBPARSERS", "build_parser", "main", "parse_packing"]

# in the order ``--help`` lists them
MODULES = (train, matrix, fetch_weights, prepare_data, bench, report, figures, status, gpu_check)


def build_parser() -> Parser:
    parser = Parser(
        prog="reproduce",
        allow_abbrev=False,  # a misspelt or shortened flag must fail, never guess
        description="Reproduction harness for 'Improved Training of Wasserstein GANs' "
        "(Gulrajani et al., 2017).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in MODULES:
        module.add_parser(sub)
    return parser


COMMANDS: dict[str, Callable[..., int]] = {
    m.__name__.rsplit(".", 1)[1].replace("_", "-"): m.run for m in MODULES
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report it from the subcommand's parser, which knows (and suggests) its flags
        sub = SUBPARSERS.get(args.command, parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        check_text_arguments(args)
        envvars.check_all()
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except UserError as e:
        print(f"reproduce {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`status | head`): no traceback; stdout to /dev/null so that
        # the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk (report --out, a figure's job, a matrix summary): one line, exit 1;
        # every file is written atomically, so nothing is left half-written as if complete
        where = f" writing {e.filename}" if e.filename else ""
        print(f"reproduce {args.command}: error: no space left on the device{where} "
              f"({e.strerror or e}); free some space and run it again",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
