"""Import torch so that its matrix products run on torch's own BLAS, also inside R.

A host program can put a BLAS into the process's global symbol scope before Python starts:
Debian's R links the reference ``libblas.so.3``. torch's CPU library looks ``sgemm_`` and its
kin up through that scope, so from R (through reticulate) every torch matrix product ran on
R's unoptimised BLAS, 13-39x slower than from Python. Loading torch with ``RTLD_DEEPBIND``
makes its libraries resolve their own symbols first. The flag is set only while torch is
imported and only when the global scope already holds a BLAS, so plain Python is untouched
and libraries imported afterwards (h5py, scipy) load as usual.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

# Fortran BLAS entry points torch's CPU kernels call; one is enough to detect a global BLAS.
_BLAS_SYMBOL = "sgemm_"
_imported_isolated = False  # set once import_torch() has loaded torch with RTLD_DEEPBIND


def global_blas_present() -> bool:
    """True when the process's global symbol scope already defines a BLAS (e.g. R's)."""
    try:
        return hasattr(ctypes.CDLL(None), _BLAS_SYMBOL)
    except OSError:
        return False


def import_torch():
    """Import torch, isolated from a BLAS the host process loaded globally (see module doc)."""
    global _imported_isolated
    deepbind = getattr(os, "RTLD_DEEPBIND", None)  # glibc only; macOS uses two-level names
    if "torch" in sys.modules:
        if deepbind is not None and not _imported_isolated and global_blas_present():
            warnings.warn(
                "torch was imported before zipo in a process that holds another BLAS (R's, "
                "for example), so torch's matrix products may run on that BLAS and be many "
                "times slower. Import zipo before torch (in R: restart R and load zipo first).",
                RuntimeWarning, stacklevel=3,
            )
        return sys.modules["torch"]
    if deepbind is None or not global_blas_present():
        import torch
        return torch
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import torch
    finally:
        sys.setdlopenflags(flags)
    _imported_isolated = True
    return torch
