"""Train a classifier, segmentor or detector from a config.

The checkout's entry point to :mod:`patchscale_mm.apis.train`, which is
also ``python -m patchscale_mm.train`` where only the package is installed.

    python tools/train.py configs/seg/adv_b_p2_linear_ade20k.py
    tools/dist_train.sh configs/seg/adv_b_p2_linear_ade20k.py 8
"""
from patchscale_mm.apis.train import main

if __name__ == '__main__':
    main()
