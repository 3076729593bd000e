"""Leiden clusters of each embedding, run with the python of benchmarks/.venvs/scanpy
(scanpy + igraph + leidenalg, pinned in benchmarks/requirements-scanpy.txt): scanpy's defaults,
15-nearest-neighbour graph on the embedding, Leiden (igraph flavour) at resolution 1.

    python leiden_worker.py IN.npz OUT.npz     # IN: one array per 'dataset|seed|method'
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    a = p.parse_args()
    import anndata as ad
    import scanpy as sc

    z = np.load(a.input)
    out = {}
    for key in z.files:  # "dataset|seed|method"
        seed = int(key.split("|")[1])
        emb = np.asarray(z[key], dtype=np.float32)
        adata = ad.AnnData(np.zeros((emb.shape[0], 1), dtype=np.float32))
        adata.obsm["emb"] = emb
        sc.pp.neighbors(adata, n_neighbors=min(15, emb.shape[0] - 1), use_rep="emb",
                        random_state=seed)
        sc.tl.leiden(adata, resolution=1.0, flavor="igraph", n_iterations=2, directed=False,
                     random_state=seed)
        out[key] = adata.obs["leiden"].astype(int).to_numpy()
    out["__versions__"] = np.array(json.dumps({"scanpy": sc.__version__}))
    np.savez(a.output, **out)


if __name__ == "__main__":
    main()
