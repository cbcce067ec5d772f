"""``python -m splitvit`` is the ``splitvit`` command."""

import sys

from .cli import main

sys.exit(main())
