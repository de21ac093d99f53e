"""``python -m server up|down|status|clean``: the same command as ``chatft server``."""

from server.manager import main

main()
