"""ZiPo: denoise single-cell RNA-seq counts with a deep zero-inflated count autoencoder.

Sharifitabar et al., IEEE/ACM TCBB 22(6), 2025. Quick start::

    import zipo
    m = zipo.ZiPo(adata)              # raw counts in adata.X, cells x genes
    m.train()
    m.denoise(adata)                  # adata.layers["zipo_denoised"], adata.obsm["X_zipo"]
"""

__version__ = "0.1.0"

# Before anything imports torch: inside R, torch must not bind to R's BLAS (see _torch_blas).
from ._torch_blas import import_torch  # noqa: E402

import_torch()

from .config import ZiPoConfig, load_config  # noqa: E402
from .model import ZiPo, denoise  # noqa: E402
from .tools.tuning import tune  # noqa: E402  (Optuna is imported only when tune() runs)

__all__ = ["ZiPo", "ZiPoConfig", "denoise", "load_config", "tune", "__version__"]
