"""``python -m femlib``: the same as the ``femlib`` command."""

import sys

from femlib.cli import main

sys.exit(main())
