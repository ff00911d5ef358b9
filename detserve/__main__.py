"""`python -m detserve`: parse the configuration and run the server until it is told to stop."""

import sys

from .config import load_config
from .server import run


def main(argv=None):
    return run(load_config(argv))


if __name__ == "__main__":
    sys.exit(main())
