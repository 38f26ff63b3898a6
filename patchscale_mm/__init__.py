"""patchscale_mm: patch-size scaling for plain vision backbones in OpenMMLab.

Importing the package is cheap: models are registered when
``patchscale_mm.models`` is imported (configs do it through
``custom_imports``; the registry's ``locations`` do it on first lookup).
"""
from .version import __version__

__all__ = ['__version__']
