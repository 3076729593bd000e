"""Peak memory and wall time of ``zipo::denoise`` from R on an HDF5-backed SingleCellExperiment
(issue 16): denoised counts kept in memory against ``out =`` (an HDF5-backed assay).

    .venv-r/bin/python -m benchmarks.r_hdf5_memory --cells 50000 --genes 20000
    .venv-r/bin/python -m benchmarks.r_hdf5_memory --cells 2000 --genes 500 --format tenx

Run it with the Python environment R's reticulate uses (NumPy < 2; ``.venv-r`` from
``scripts/install-r.sh``). It writes a synthetic count matrix to an HDF5 file, then runs one
Rscript per output route, each a fresh process that opens the file as an HDF5-backed
``DelayedMatrix`` and calls ``zipo::denoise`` as a user would; the peak resident set size of that
R process (Python runs inside it, through reticulate) and its wall time are printed as a table.

The counts are Poisson draws around real cells: each synthetic cell copies a random source cell's
library size and draws from the mean of that cell's normalised profile and its cell type's (PBMC 4k
by default, all expressed genes; genes beyond those are copies of random expressed genes). Two
HDF5 layouts: ``dense`` (a chunked, gzip-compressed genes x cells integer dataset, what
``HDF5Array::writeHDF5Array`` makes, read with ``HDF5Array::HDF5Array``) and ``tenx`` (10x
Genomics' sparse layout, read with ``HDF5Array::TENxMatrix``). The training is cut short
(``--epochs``, a small encoder): this measures memory and the cost of reading and writing, not
denoising quality.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

# One output route in a fresh R process. The last line printed is "seconds_read seconds_denoise".
R_DENOISE = textwrap.dedent("""
    suppressPackageStartupMessages({{ library(SingleCellExperiment); library(HDF5Array) }})
    stopifnot(suppressWarnings(zipo::zipo_available()))
    t0 <- Sys.time()
    path <- "{path}"
    counts <- if ("{layout}" == "tenx") TENxMatrix(path, "matrix") else HDF5Array(path, "counts")
    dimnames(counts) <- list(as.character(rhdf5::h5read(path, "gene_names")),
                             as.character(rhdf5::h5read(path, "cell_names")))
    sce <- SingleCellExperiment(assays = list(counts = counts))
    out <- {out}
    sce <- zipo::denoise(sce, epochs = {epochs}, seed = 1, encoder_dims = c({encoder}),
                         out = out, verbose = FALSE)
    den <- assay(sce, "denoised")
    stopifnot(identical(dim(den), dim(counts)), isFALSE(out) == is.matrix(den))
    # Touch the result as an analysis would: per-gene sums, a block of cells at a time.
    s <- DelayedArray::rowSums(den)
    stopifnot(all(is.finite(s)))
    cat(class(den)[1], "\\n")
    cat(as.numeric(difftime(Sys.time(), t0, units = "secs")), "\\n")
""")


def synthetic_counts(source, n_cells: int, n_genes: int, seed: int = 0,
                     block: int = 2000):
    """CSR (n_cells x n_genes, int32) of Poisson draws around the cells of ``source`` (a
    ``benchmarks.datasets.Dataset``), drawn a block of cells at a time; gene names."""
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(source.counts, dtype=np.float64)
    lib = np.asarray(x.sum(1)).ravel()
    norm = sp.diags(1 / lib) @ x
    genes = np.arange(x.shape[1])
    names = [str(g) for g in source.genes]
    if n_genes <= x.shape[1]:
        genes = np.argsort(-np.asarray((x > 0).sum(0)).ravel(), kind="stable")[:n_genes]
        names = [names[g] for g in genes]
    else:
        extra = rng.choice(x.shape[1], n_genes - x.shape[1])
        genes = np.concatenate([genes, extra])
        names = names + [f"{names[g]}_copy{i}" for i, g in enumerate(extra)]
    labels = np.asarray(source.labels if source.labels is not None else np.zeros(x.shape[0]))
    types, type_of = np.unique(labels.astype(str), return_inverse=True)
    type_mean = np.vstack([np.asarray(norm[type_of == t].mean(0)).ravel()
                           for t in range(len(types))])
    parts = []
    for start in range(0, n_cells, block):
        src = rng.integers(0, x.shape[0], min(block, n_cells - start))
        rate = 0.5 * norm[src].toarray() + 0.5 * type_mean[type_of[src]]
        draws = rng.poisson(rate[:, genes] * lib[src, None]).astype(np.int32)
        draws[draws.sum(1) == 0, 0] = 1  # no empty cells (zipo refuses them)
        parts.append(sp.csr_matrix(draws))
    counts = sp.vstack(parts, format="csr")
    empty = np.flatnonzero(np.asarray(counts.sum(0)).ravel() == 0)
    if empty.size:  # a gene never drawn gets one count (zipo refuses all-zero genes)
        counts = (counts + sp.csr_matrix((np.ones(empty.size, np.int32),
                                          (rng.integers(0, n_cells, empty.size), empty)),
                                         shape=counts.shape)).tocsr()
    return counts, names


def write_hdf5(counts: sp.csr_matrix, gene_names, path: Path, layout: str,
               chunk_cells: int = 100) -> None:
    """The counts as an HDF5 file R reads as a genes x cells DelayedMatrix (HDF5 is row-major,
    R column-major: a cells x genes dataset is genes x cells in R), with the names beside."""
    import h5py

    n_cells, n_genes = counts.shape
    with h5py.File(path, "w") as f:
        f["gene_names"] = np.asarray(gene_names, dtype="S")
        f["cell_names"] = np.asarray([f"cell{i}" for i in range(n_cells)], dtype="S")
        if layout == "tenx":
            g = f.create_group("matrix")  # the 10x layout: CSC of genes x cells = CSR here
            g["data"], g["indices"] = counts.data, counts.indices.astype(np.int64)
            g["indptr"] = counts.indptr.astype(np.int64)
            g["shape"] = np.array([n_genes, n_cells], dtype=np.int32)
            return
        chunk = (min(chunk_cells, n_cells), n_genes)
        d = f.create_dataset("counts", shape=counts.shape, dtype=np.int32, chunks=chunk,
                             compression="gzip", compression_opts=1)
        for start in range(0, n_cells, chunk_cells * 10):
            stop = min(start + chunk_cells * 10, n_cells)
            d[start:stop] = counts[start:stop].toarray()


def run_route(path: Path, layout: str, route: str, epochs: int, encoder: str,
              out_dir: Path) -> dict:
    """One Rscript for one output route; its peak RSS (GB), wall time and what it printed."""
    out = "FALSE" if route == "memory" else f'"{out_dir / "denoised.h5ad"}"'
    script = out_dir / f"denoise_{route}.R"
    script.write_text(R_DENOISE.format(path=path, layout=layout, out=out, epochs=epochs,
                                       encoder=encoder))
    # A Python child per route, so that RUSAGE_CHILDREN holds this route's Rscript alone.
    probe = textwrap.dedent(f"""
        import os, resource, subprocess, sys, time
        env = dict(os.environ, RETICULATE_PYTHON={sys.executable!r})
        t = time.perf_counter()
        done = subprocess.run(["Rscript", {str(script)!r}], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        sys.stderr.write(done.stdout + done.stderr)
        print(done.returncode, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    rc, wall, maxrss_kb = done.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"Rscript ({route}) failed:\n{done.stderr}")
    printed = done.stderr.strip().splitlines()
    return {"route": route, "rss_gb": int(maxrss_kb) / 1e6, "wall_s": float(wall),
            "assay_class": printed[-2].strip()}


def load_source(name: str):
    from . import datasets

    if name in ("pbmc4k", "pbmc_small"):
        return datasets.pbmc4k(None) if name == "pbmc4k" else datasets.pbmc_small()
    import anndata as ad

    a = ad.read_h5ad(name)
    x = sp.csr_matrix(a.X)
    keep = np.asarray(x.sum(0)).ravel() > 0
    return datasets.Dataset(Path(name).stem, x[:, keep].tocsr(),
                            np.asarray(a.var_names)[keep], None, None, name)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=50_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--format", dest="layout", choices=["dense", "tenx"], default="dense")
    p.add_argument("--routes", nargs="+", choices=["memory", "out"], default=["memory", "out"])
    p.add_argument("--source", default="pbmc4k",
                   help="profiles: pbmc4k, pbmc_small (shared data) or an .h5ad of raw counts")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--encoder", default="64, 16", help="encoder_dims, as R code")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the HDF5 files go (default: a temporary folder, removed after)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        counts, names = synthetic_counts(load_source(args.source), args.cells, args.genes)
        path = tmp / f"counts_{args.layout}.h5"
        write_hdf5(counts, names, path, args.layout)
        density = counts.nnz / (counts.shape[0] * counts.shape[1])
        print(f"zipo::denoise from R on an HDF5-backed SCE ({args.layout}): {args.genes:,} genes x "
              f"{args.cells:,} cells, {100 * density:.2f}% non-zero, profiles from "
              f"{args.source}; {args.epochs} epoch(s), encoder_dims = c({args.encoder}); file "
              f"{path.stat().st_size / 1e9:.2f} GB, made in {time.perf_counter() - t:.0f} s\n",
              flush=True)
        del counts
        header = f"{'output':<10} {'denoised assay':<16} {'peak RSS GB':>12} {'wall s':>8}"
        print(header)
        print("-" * len(header), flush=True)
        rows = []
        for route in args.routes:
            row = run_route(path, args.layout, route, args.epochs, args.encoder, tmp)
            print(f"{route:<10} {row['assay_class']:<16} {row['rss_gb']:>12.2f} "
                  f"{row['wall_s']:>8.0f}", flush=True)
            (tmp / "denoised.h5ad").unlink(missing_ok=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
