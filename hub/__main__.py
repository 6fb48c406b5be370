"""``python -m hub`` is ``ssehub``."""

import sys

from hub.cli import main

sys.exit(main())
