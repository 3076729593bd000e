"""Small real datasets shipped inside the package (provenance and licences: README.md here)."""

from __future__ import annotations

from importlib import resources


def pbmc4k_demo():
    """2,170 PBMCs x 1,009 genes of raw UMI counts with ``obs["cell_type"]`` (10x PBMC 4k)."""
    import anndata as ad

    with resources.as_file(resources.files(__name__) / "pbmc4k_demo.h5ad") as path:
        return ad.read_h5ad(path)
