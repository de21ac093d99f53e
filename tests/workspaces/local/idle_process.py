"""A process that only waits: what a detached job or server looks like to a liveness check."""

import time

if __name__ == "__main__":
    time.sleep(60)
