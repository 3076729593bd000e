"""ZiPo: denoise single-cell RNA-seq counts with a deep zero-inflated count autoencoder.

Sharifitabar et al., IEEE/ACM TCBB 22(6), 2025. Quick start::

    import zipo
    m = zipo.ZiPo(adata)              # raw counts in adata.X, cells x genes
    m.train()
    m.denoise(adata)                  # adata.layers["zipo_denoised"], adata.obsm["X_zipo"]
"""

__version__ = "0.1.0"

# Inside R, torch must be imported before anything else can import it, so that it does not
# bind to R's BLAS (see _torch_blas). In plain Python there is no such BLAS, and the model's
# names below load torch when first used: ``zipo.config`` and the presets read without it.
from ._torch_blas import global_blas_present, import_torch  # noqa: E402

if global_blas_present():
    import_torch()

from .config import ZiPoConfig, load_config  # noqa: E402

__all__ = ["ZiPo", "ZiPoConfig", "denoise", "load_config", "tune", "__version__"]

# name: the submodule that defines it (imported on first use, after import_torch)
_LAZY = {"ZiPo": "model", "denoise": "workflow", "tune": "tools.tuning"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'zipo' has no attribute {name!r}")
    import importlib

    import_torch()
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})
