"""``python -m traceguard``: the command line (see :mod:`traceguard.cli`)."""

import sys

from traceguard.cli import main

sys.exit(main())
