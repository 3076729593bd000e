# One conversion of the counts per call, and one genes x cells double matrix
# per result.

count_calls <- function(fun, expr) {
  counter <- new.env()
  counter$n <- 0L
  ns <- asNamespace("zipo")
  tracer <- bquote(assign("n", get("n", envir = .(counter)) + 1L,
                          envir = .(counter)))
  suppressMessages(trace(fun, tracer = tracer, where = ns, print = FALSE))
  on.exit(suppressMessages(untrace(fun, where = ns)), add = TRUE)
  force(expr)
  counter$n
}

test_that("denoise() converts the counts once, for training and denoising", {
  skip_without_core()
  conversions <- function(x) {
    count_calls(".counts_to_anndata",
                do.call(denoise, c(list(x, epochs = 1), fast)))
  }
  sce <- simulated_sce()
  expect_identical(conversions(sce), 1L)
  expect_identical(conversions(assay_of(sce, "counts")), 1L)
  skip_if_not_installed("SeuratObject")
  so <- SeuratObject::CreateSeuratObject(counts = assay_of(sce, "counts"))
  expect_identical(conversions(so), 1L)
})

# Sizes of R's allocations of at least `bytes` while `expr` runs (Rprofmem).
r_allocations <- function(expr, bytes) {
  f <- tempfile()
  Rprofmem(f, threshold = bytes)
  on.exit(Rprofmem(NULL), add = TRUE)
  force(expr)
  Rprofmem(NULL)
  lines <- grep("new page", readLines(f), value = TRUE, invert = TRUE)
  as.numeric(sub(" ?:.*", "", lines))
}

test_that("R allocates one genes x cells double matrix per result, no copy", {
  skip_without_core()
  skip_if_not(capabilities("profmem"), "R was built without memory profiling")
  sce <- simulated_sce(n_genes = 1000, n_cells = 3000)
  model <- train(sce, epochs = 1, encoder_dims = c(16, 8), batch_size = 1024,
                 verbose = FALSE)
  bytes <- 8 * nrow(sce) * ncol(sce)  # one genes x cells double matrix (24 MB)
  # (Smaller allocations: blocks of 8 MB, and copies of the sparse counts'
  # values.)
  sizes <- r_allocations(
    out <- denoise(sce, model = model, zero_inflation = TRUE), bytes / 2)
  # the denoised and zero_prob assays, no copy
  expect_identical(sum(sizes >= bytes), 2L)
  expect_identical(dimnames(assay_of(out, "denoised")), dimnames(sce))
  # A dgCMatrix in is never made dense: the one large allocation is the
  # denoised matrix returned.
  counts <- assay_of(sce, "counts")
  sizes <- r_allocations(den <- predict(model, counts), bytes / 2)
  expect_identical(sum(sizes >= bytes), 1L)
  expect_identical(dimnames(den), dimnames(counts))
  skip_if_not_installed("SeuratObject")
  so <- SeuratObject::CreateSeuratObject(counts = assay_of(sce, "counts"))
  sizes <- r_allocations(out <- denoise(so, model = model), bytes / 2)
  # counts and data slots share one matrix
  expect_identical(sum(sizes >= bytes), 1L)
  den <- SeuratObject::GetAssayData(out, slot = "data", assay = "denoised")
  expect_identical(den, SeuratObject::GetAssayData(out, slot = "counts",
                                                   assay = "denoised"))
})

test_that("results come to R a block of cells at a time, never whole", {
  # (never as a whole float64 matrix in Python)
  skip_without_core()
  np <- reticulate::import("numpy", convert = FALSE)
  sp <- reticulate::import("scipy.sparse", convert = FALSE)
  n_genes <- 1000L
  n_cells <- 12000L
  empty <- sp$csr_matrix(reticulate::tuple(n_cells, n_genes),
                         dtype = "float32")
  adata <- reticulate::import("anndata")$AnnData(empty)
  values <- np$random$default_rng(1L)$random(c(n_cells, n_genes),
                                             dtype = "float32")
  adata$layers$`__setitem__`("zipo_denoised", values)
  bytes <- 8 * n_genes * n_cells  # 96 MB as float64
  dn <- list(paste0("g", seq_len(n_genes)), paste0("c", seq_len(n_cells)))
  tm <- reticulate::import("tracemalloc")
  tm$start()
  m <- zipo:::.result_matrix(adata, "denoised", dn)
  python_peak <- unlist(tm$get_traced_memory())[2]
  tm$stop()
  # blocks of 8 MB; the whole result would be 96 MB
  expect_lt(python_peak, bytes / 4)
  expect_identical(dimnames(m), dn)
  for (cell in c(1L, 5000L, n_cells)) {
    expected <- reticulate::py_to_r(values[cell - 1L]$astype("float64"))
    expect_identical(m[, cell], as.numeric(expected), ignore_attr = TRUE)
  }
})
