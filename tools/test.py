"""Evaluate a checkpoint on a config's test set (top-1, mIoU or box/mask AP).

The checkout's entry point to :mod:`patchscale_mm.apis.test`, which is
also ``python -m patchscale_mm.test`` where only the package is installed.

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl]
    tools/dist_test.sh CONFIG CHECKPOINT 8
"""
from patchscale_mm.apis.test import main

if __name__ == '__main__':
    main()
