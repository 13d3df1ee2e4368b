"""``python -m femlib``: the same as the ``femlib`` command."""

import sys

from femlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
