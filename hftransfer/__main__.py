"""`python -m hftransfer ...` and `accelerate launch -m hftransfer train RECIPE ...`: the `hftransfer` command line."""

from hftransfer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
