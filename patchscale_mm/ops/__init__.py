from .dtypes import compute_dtype
from .ssd import ssd_scan, ssd_scan_chunked, ssd_scan_ref

__all__ = ['compute_dtype', 'ssd_scan', 'ssd_scan_ref', 'ssd_scan_chunked']
