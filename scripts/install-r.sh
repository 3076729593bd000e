#!/usr/bin/env bash
# Installs R and the Bioconductor/CRAN packages from Debian, the zipo R package, and the
# Python environment R uses (created by zipo::install_zipo(), so that function is what gets
# tested). The Dockerfile runs this script, and so does .ci/run.
#
#   scripts/install-r.sh [R_PYTHON_ENV]      default: .venv-r in the repository
#
# Extra Python requirements for that environment (test tools in CI) come from
# ZIPO_R_EXTRA_PACKAGES, space-separated.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
env_dir="${1:-$repo/.venv-r}"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq r-base-core r-bioc-singlecellexperiment r-cran-reticulate r-cran-matrix \
  r-cran-testthat r-cran-knitr r-cran-rmarkdown r-cran-seurat r-cran-seuratobject \
  r-bioc-scater r-bioc-scran r-bioc-hdf5array r-bioc-bluster > /dev/null
R --version | head -n 1

R CMD INSTALL --no-test-load "$repo/rpkg"

# install_zipo() pins numpy<2: Debian's reticulate 1.28 refuses NumPy 2.
extra="${ZIPO_R_EXTRA_PACKAGES:-}"
Rscript -e 'a <- commandArgs(TRUE); zipo::install_zipo(envname = a[1], source = a[2], python = Sys.which("python3"), extra_packages = if (nzchar(a[3])) strsplit(a[3], " ")[[1]] else character())' \
  "$env_dir" "$repo" "$extra"
RETICULATE_PYTHON="$env_dir/bin/python" Rscript -e 'stopifnot(zipo::zipo_available()); cat("zipo R package and Python core ready\n")'
