from .linear_seg_head import LinearSegHead

__all__ = ['LinearSegHead']
