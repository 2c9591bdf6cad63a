"""Low-level operators: the selective scan and the 4-direction cross scan."""

from remamber.ops.cross_scan import cross_merge, cross_scan
from remamber.ops.selective_scan import (
    scan_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_parallel,
    selective_scan_ref,
)

__all__ = [
    "cross_merge",
    "cross_scan",
    "scan_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_parallel",
    "selective_scan_ref",
]
