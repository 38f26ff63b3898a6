from .safe_loading import BadSampleError, BadSampleGuard
from .transforms import ThreeAugment

__all__ = ['BadSampleError', 'BadSampleGuard', 'ThreeAugment']
