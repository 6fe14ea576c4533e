"""`python -m hftransfer.weights ...`: the same command as `hftransfer weights ...`."""

import sys

from .cli import main_weights

if __name__ == "__main__":
    sys.exit(main_weights())
