import anndata as ad
import numpy as np
import zipo

## VIASH START
par = {
    "input_train": "resources_test/task_denoising/cxg_immune_cell_atlas/train.h5ad",
    "output": "output_zipo.h5ad",
    "expectation": "posterior",
    "max_epochs": None,
    "seed": None,
    "num_threads": None,
}
meta = {
    "name": "zipo",
}
## VIASH END

# The task's normalisation scale (its mse metric: normalize_total(target_sum=10000) + log1p).
TARGET_SUM = 1e4

print(f"ZiPo version: {zipo.__version__}", flush=True)

print("Load data", flush=True)
input_train = ad.read_h5ad(par["input_train"])

# Arguments left unset keep ZiPo's own defaults (its stopping rule, seed and torch threads).
options = {key: par[key] for key in ("max_epochs", "seed", "num_threads")
           if par.get(key) is not None}

print(f"Train ZiPo ({options or 'defaults'}) and denoise, expectation={par['expectation']}",
      flush=True)
model = zipo.ZiPo(input_train, layer="counts", **options).train()
model.denoise(input_train, expectation=par["expectation"], target_sum=TARGET_SUM)
denoised = input_train.layers["zipo_denoised"]

if par["expectation"] == "lognorm":
    # The task expects counts: E[log1p(TARGET_SUM * X / l)] is turned back into the counts whose
    # normalize_total + log1p it is, at the cell's library size l that it was normalised by.
    library = input_train.obs["zipo_library_size"].to_numpy(dtype=np.float64)
    denoised = (np.expm1(denoised.astype(np.float64)) * (library / TARGET_SUM)[:, None])
    denoised = denoised.astype(np.float32)

print("Write output AnnData to file", flush=True)
output = ad.AnnData(
    obs=input_train.obs[[]],
    var=input_train.var[[]],
    uns={
        "dataset_id": input_train.uns["dataset_id"],
        "method_id": meta["name"],
    },
)
output.layers["denoised"] = denoised
output.write_h5ad(par["output"], compression="gzip")
