"""landmark-retrieval lab: instance-level image retrieval helpers for the notebooks."""

from .config import tune_malloc as _tune_malloc

__version__ = "0.1.0"
MALLOC_TUNED = _tune_malloc()   # glibc heap settings that spare PyTorch's CPU tensors most page faults
