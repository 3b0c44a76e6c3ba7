"""Run tinfinite from a checkout: `python main.py ...` is the `tinfinite` command of an install."""
import sys

from tinfinite.cli import main

if __name__ == "__main__":
    sys.exit(main())
