"""`python -m hftransfer.testing.hub_server ...` (or `python -m hub_server` with the package folder's parent on
PYTHONPATH): run the server until SIGINT or SIGTERM."""

import logging
import os
import sys

from .cli import main

if __name__ == "__main__":
    exit_code = main()
    # Skip the interpreter's teardown: `python -m` imports the hftransfer package, which imports torch and
    # transformers, whose teardown takes seconds and has nothing to flush for this process (the server has stopped,
    # its writes are on disk).
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(exit_code)
