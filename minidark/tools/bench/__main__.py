"""``python -m minidark.tools.bench ARGS``: ``minidark bench ARGS``, or, with
``--worker``, one measurement in this fresh process (how the parent starts a
worker). An entry point, at the top of the house: it may import the CLI."""

import sys

from .worker import worker_main


def main(argv):
    if "--worker" in argv:
        return worker_main(argv)
    # the CLI (every command) only when not a worker: workers start lean
    from ...cli import main as cli_main

    return cli_main(["bench", *argv])


sys.exit(main(sys.argv[1:]))
