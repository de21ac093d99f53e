"""``python -m server up|down|status|clean``: the same command as ``chatft server``."""

import sys

from server.cli import main

sys.exit(main())
