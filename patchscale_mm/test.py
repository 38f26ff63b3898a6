"""``python -m patchscale_mm.test CONFIG CHECKPOINT``:
:mod:`patchscale_mm.apis.test` where only the package is installed
(``tools/test.py`` in a checkout)."""
from patchscale_mm.apis.test import main

if __name__ == '__main__':
    main()
