"""`python -m detserve.calibrate`: the command's name; the measurement is worker code.

It times the worker's own Detector in this process, so it lives with the
worker (detserve/worker/calibration.py) and is imported only when the
command runs: importing this module loads no OpenCV.
"""

import sys


def main(argv=None):
    from .worker.calibration import main as calibrate

    return calibrate(argv)


if __name__ == "__main__":
    sys.exit(main())
