# ZiPo with its R package: R 4.2 from Debian bookworm, Bioconductor's SingleCellExperiment,
# Seurat, and the Python core in a virtualenv made by zipo::install_zipo().
# The steps live in scripts/install-r.sh, which CI runs too (.ci/run), so they are tested.
FROM python:3.11-bookworm

COPY . /opt/zipo
WORKDIR /opt/zipo
RUN bash scripts/install-r.sh /opt/zipo-python

ENV RETICULATE_PYTHON=/opt/zipo-python/bin/python \
    PATH=/opt/zipo-python/bin:$PATH

# R: zipo::denoise(sce)      Python/CLI: zipo demo
CMD ["Rscript", "-e", "print(zipo::zipo_available())"]
