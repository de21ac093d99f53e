"""A stand-in detached process for state tests: ``python -m tests.sleeper <folder>`` sleeps."""

import sys
import time

if __name__ == "__main__":
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 60)
