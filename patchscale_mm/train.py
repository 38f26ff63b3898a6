"""``python -m patchscale_mm.train CONFIG``: :mod:`patchscale_mm.apis.train`
where only the package is installed (``tools/train.py`` in a checkout)."""
from patchscale_mm.apis.train import main

if __name__ == '__main__':
    main()
