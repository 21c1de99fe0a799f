"""`python -m rlhfkit ...` is the `rlhfkit` command line."""

import sys

from rlhfkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
