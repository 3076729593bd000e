"""Every kind of bad input is refused with a ValueError whose message names the problem."""

from __future__ import annotations

import json
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import zipo
from zipo.io import FORMAT_VERSION

from conftest import SMALL_ENCODER


def _model(adata, **options):
    kw = dict(encoder_dims=SMALL_ENCODER, max_epochs=1, batch_size=32, verbose=False)
    kw.update(options)
    return zipo.ZiPo(adata, **kw)


def _with_x(adata, dense: np.ndarray, fmt: str):
    a = adata.copy()
    a.X = sp.csr_matrix(dense) if fmt == "csr" else dense
    return a


# --------------------------------------------------------------------------- bad counts
def _negative(x):
    x[3, 5] = -1
    return x


def _nan(x):
    x[0, 0] = np.nan
    return x


def _inf(x):
    x[7, 2] = np.inf
    return x


def _fraction(x):
    x[1, 1] = 2.5
    return x


BAD_COUNTS = {
    "negative": (_negative, r"negative values.*raw counts"),
    "nan": (_nan, r"NaN or infinite"),
    "inf": (_inf, r"NaN or infinite"),
    "non-integer": (_fraction, r"non-integer values.*allow_non_integer=True"),
}


@pytest.mark.parametrize("fmt", ["csr", "dense"])
@pytest.mark.parametrize("problem", list(BAD_COUNTS))
def test_bad_counts_at_training(pbmc_small, problem, fmt):
    corrupt, message = BAD_COUNTS[problem]
    a = _with_x(pbmc_small, corrupt(pbmc_small.X.toarray()), fmt)
    with pytest.raises(ValueError, match=message):
        _model(a)


@pytest.mark.parametrize("problem", list(BAD_COUNTS))
def test_bad_counts_at_inference(pbmc_small, trained_model, problem):
    corrupt, message = BAD_COUNTS[problem]
    a = _with_x(pbmc_small, corrupt(pbmc_small.X.toarray()), "csr")
    with pytest.raises(ValueError, match=message):
        trained_model.denoise(a, copy=True)


def test_bad_counts_in_a_layer_are_named(pbmc_small):
    a = pbmc_small.copy()
    a.layers["counts"] = sp.csr_matrix(_negative(a.X.toarray()))
    with pytest.raises(ValueError, match=r"adata\.layers\['counts'\] contains negative values"):
        _model(a, layer="counts")


def test_log_normalised_x_names_where_the_counts_are(pbmc_small):
    # the scanpy habit: raw counts in a layer or in .raw, log-normalised values in X
    a = pbmc_small.copy()
    a.layers["counts"] = a.X.copy()
    a.raw = a.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    with pytest.raises(ValueError, match=r"pass raw UMI counts \(here: layer='counts' or "
                                         r"adata\.raw\.to_adata\(\)\)"):
        _model(a)
    b = pbmc_small.copy()
    b.layers["lognorm"] = sp.csr_matrix(np.log1p(b.X.toarray()))
    with pytest.raises(ValueError, match=r"pass raw UMI counts \(here: layer=None, adata\.X\)"):
        _model(b, layer="lognorm")
    del b.layers["lognorm"]  # nothing that looks like counts elsewhere: the general fix
    b.X = sp.csr_matrix(np.log1p(b.X.toarray()))
    with pytest.raises(ValueError, match=r"pass raw UMI counts \(layer=\.\.\.\)"):
        _model(b)


def test_allow_non_integer_accepts_fractions(pbmc_small):
    a = _with_x(pbmc_small, pbmc_small.X.toarray() * 0.7, "csr")
    model = _model(a, allow_non_integer=True).train()
    assert np.all(np.isfinite(model.denoise(a, copy=True).layers["zipo_denoised"]))


def test_cells_with_zero_counts(pbmc_small):
    x = pbmc_small.X.toarray()
    x[[4, 9]] = 0
    a = _with_x(pbmc_small, x, "csr")
    names = list(a.obs_names[[4, 9]])
    with pytest.raises(ValueError, match=rf"2 cells have zero counts.*{names[0]}.*{names[1]}"):
        _model(a)


def test_all_zero_genes_are_fine_at_inference(pbmc_small, trained_model):
    """A gene unseen in some new cells is normal (training leaves such genes out:
    tests/test_undetected_genes.py)."""
    x = pbmc_small.X.toarray()
    x[:, 17] = 0
    out = trained_model.denoise(_with_x(pbmc_small, x, "csr"), copy=True)
    assert np.all(np.isfinite(out.layers["zipo_denoised"]))


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_empty_matrix(shape):
    a = ad.AnnData(sp.csr_matrix(shape, dtype=np.float32))
    with pytest.raises(ValueError, match=rf"is empty \({shape[0]} cells x {shape[1]} genes\)"):
        _model(a)


@pytest.mark.parametrize("dtype", [object, str])
def test_non_numeric_dtype(pbmc_small, dtype):
    a = ad.AnnData(pbmc_small.X.toarray().astype(dtype), obs=pbmc_small.obs, var=pbmc_small.var)
    with pytest.raises(ValueError, match=r"dtype .*not numbers"):
        _model(a)


def test_duplicate_gene_names(pbmc_small):
    a = pbmc_small.copy()
    names = list(a.var_names)
    names[10] = names[3]
    a.var_names = names
    with pytest.raises(ValueError, match=rf"gene names are not unique \({names[3]}\).*var_names_make_unique"):
        _model(a)


def test_wrong_layer_name(pbmc_small):
    a = pbmc_small.copy()
    a.layers["counts"] = a.X.copy()
    with pytest.raises(ValueError, match=r"layer 'raw' is not in adata\.layers \(it has: counts\)"):
        _model(a, layer="raw")


def test_wrong_layer_name_without_layers(pbmc_small):
    with pytest.raises(ValueError, match=r"layer 'counts' is not in adata\.layers.*no layers"):
        _model(pbmc_small, layer="counts")


# --------------------------------------------------------------------------- genes at inference
def test_missing_genes_at_inference(pbmc_small, trained_model):
    a = pbmc_small[:, [g for g in pbmc_small.var_names if g != "CD79A"]].copy()
    with pytest.raises(ValueError, match=r"1 genes of the model are missing \(CD79A\)"):
        trained_model.denoise(a, copy=True)


def test_extra_genes_at_inference(pbmc_small, trained_model):
    a = pbmc_small.copy()
    extra = ad.AnnData(sp.csr_matrix(np.ones((a.n_obs, 1), dtype=np.float32)), obs=a.obs,
                       var=pd.DataFrame(index=["MYNEWGENE"]))
    a = ad.concat([a, extra], axis=1, merge="same")
    with pytest.raises(ValueError, match=r"1 genes are not in the model and have counts here "
                                         r"\(MYNEWGENE\)"):
        trained_model.denoise(a, copy=True)
    with pytest.raises(ValueError, match=r"MYNEWGENE"):
        trained_model.get_latent(a)


def test_errors_carry_their_fix_in_r(pbmc_small, trained_model, monkeypatch):
    """Inside the R package (zipo.errors.speak_r) the same errors name R's objects and
    functions; each error also renders in the other language."""
    import zipo.errors

    extra = ad.concat([pbmc_small, ad.AnnData(
        sp.csr_matrix(np.ones((pbmc_small.n_obs, 1), dtype=np.float32)), obs=pbmc_small.obs,
        var=pd.DataFrame(index=["MYNEWGENE"]))], axis=1, merge="same")
    x = pbmc_small.X.toarray()
    x[4] = 0
    empty = _with_x(pbmc_small, x, "csr")
    with pytest.raises(zipo.errors.InputError) as python_error:
        trained_model.denoise(extra, copy=True)
    assert "adata[:, model.var_names]" in str(python_error.value)
    monkeypatch.setattr(zipo.errors, "_language", "r")
    cases = [
        (lambda: trained_model.denoise(extra, copy=True),
         r"^the genes of the object do not match the trained model: 1 genes are not in the model "
         r"and have counts here \(MYNEWGENE\)\. Drop them with x\[rownames\(model\), \]"),
        (lambda: trained_model.denoise(pbmc_small[:, 1:].copy(), copy=True),
         r"Subset or reorder with x\[rownames\(model\), \] \(adding any missing genes as rows"),
        (lambda: _model(empty), r"1 cells have zero counts in the counts .*"
                                r"scuttle::addPerCellQC\(sce\); sce\[, sce\$sum > 0\]"),
        (lambda: _model(_with_x(pbmc_small, x * 0.5 + 0.25, "csr")),
         r"assay.type = \"counts\"\), or set allow_non_integer = TRUE"),
        (lambda: trained_model.denoise(pbmc_small, expectation="mean", copy=True),
         r"Seurat's NormalizeData"),
        (lambda: _model(pbmc_small, verbose="yes"), r'^verbose must be TRUE or FALSE, got "yes"$'),
        (lambda: _model(pbmc_small, max_epochs=0), r"^epochs must be >= 1, got 0$"),
        (lambda: _model(pbmc_small, encoder_dims=["64"]),
         r'^encoder_dims must be a vector of whole numbers, e\.g\. c\(512, 128\), got c\("64"\)$'),
    ]
    for call, message in cases:
        with pytest.raises(zipo.errors.InputError, match=message) as error:
            call()
        assert not any(word in str(error.value) for word in ("adata", "scanpy", "var_names"))
    assert str(python_error.value) == python_error.value.message("python")
    assert "x[rownames(model), ]" in python_error.value.message("r")


def test_messages_too_long_for_reticulate_reach_r_shortened():
    # reticulate 1.28 turns a Python error message of ~1,000 characters into a C++ substr error
    from zipo.rbridge import R_MESSAGE_LIMIT, call

    def fail(message, kind=ValueError):
        raise kind(message)

    problem, fix = "option 'x' is unknown" + "; a" * 600, "; pass 'y'"
    with pytest.raises(ValueError) as error:
        call(fail, problem + fix)
    shortened = str(error.value)
    assert len(shortened) <= R_MESSAGE_LIMIT
    assert shortened.startswith("option 'x' is unknown") and shortened.endswith("; pass 'y'")
    assert " ... " in shortened
    with pytest.raises(ValueError, match=r"^short$"):
        call(fail, "short")
    with pytest.raises(KeyError):  # not bad input: passed on as it is
        call(fail, "k" * 2000, KeyError)
    assert call(lambda a, b=1: a + b, 2, b=3) == 5


def test_genes_renamed_by_seurat_get_their_fix_named(pbmc_small):
    # Seurat writes '_' in feature names as '-': the error says so rather than listing
    # "missing" and "extra" genes that are the same genes
    a = pbmc_small.copy()
    a.var_names = [g if i % 50 else f"{g}_{i}" for i, g in enumerate(a.var_names)]
    model = _model(a, max_epochs=1).train()
    renamed = a.copy()
    renamed.var_names = [g.replace("_", "-") for g in a.var_names]
    with pytest.raises(ValueError, match=r"These 5 genes differ only by '_' written as '-' "
                                         r"\(e\.g\. the model's '\w+_0' is '\w+-0' here\), as Seurat"):
        model.denoise(renamed, copy=True)


# --------------------------------------------------------------------------- covariates
def test_unknown_covariate_column(pbmc_small):
    with pytest.raises(ValueError, match=r"covariate 'batch' is not a column of adata\.obs"):
        _model(pbmc_small, covariates=["batch"])


def test_covariate_missing_at_inference(pbmc_small):
    model = _model(pbmc_small, covariates=["groups"]).train()
    a = pbmc_small.copy()
    del a.obs["groups"]
    with pytest.raises(ValueError, match=r"covariate 'groups' is not a column"):
        model.denoise(a, copy=True)


def test_unseen_category_at_inference(pbmc_small):
    model = _model(pbmc_small, covariates=["groups"]).train()
    a = pbmc_small.copy()
    a.obs["groups"] = a.obs["groups"].astype(str)
    a.obs.iloc[0, a.obs.columns.get_loc("groups")] = "g9"
    with pytest.raises(ValueError, match=r"covariate 'groups' has categories the model never saw.*g9"):
        model.denoise(a, copy=True)


@pytest.mark.parametrize("column", ["groups", "nCount_RNA"])
def test_covariate_with_nan(pbmc_small, column):
    a = pbmc_small.copy()
    values = a.obs[column].astype(object if column == "groups" else float).to_numpy().copy()
    values[[2, 5]] = np.nan
    a.obs[column] = values
    with pytest.raises(ValueError, match=rf"covariate '{column}' has 2 missing values \(NaN\)"):
        _model(a, covariates=[column])


def test_continuous_covariate_turned_text_at_inference(pbmc_small):
    model = _model(pbmc_small, covariates=["nCount_RNA"]).train()
    a = pbmc_small.copy()
    a.obs["nCount_RNA"] = a.obs["nCount_RNA"].astype(str)
    with pytest.raises(ValueError, match=r"covariate 'nCount_RNA' was numeric"):
        model.denoise(a, copy=True)


# --------------------------------------------------------------------------- options and config
@pytest.mark.parametrize(
    "d, message",
    [
        ({"model": {"alpha_zz": 0.1}}, r"unknown key 'alpha_zz' in \[model\]"),
        ({"modle": {"alpha_z": 0.1}}, r"unknown section \[modle\]"),
        ({"train": {"max_epochs": "ten"}}, r"\[train\] max_epochs must be an integer"),
        ({"train": {"max_epochs": 2.5}}, r"\[train\] max_epochs must be an integer"),
        ({"train": {"verbose": "yes"}}, r"\[train\] verbose must be true or false"),
        ({"model": {"encoder_dims": [64, "16"]}}, r"\[model\] encoder_dims must be a list of integers"),
        ({"model": {"alpha_z": "0.1"}}, r"\[model\] alpha_z must be a number"),
        ({"model": {"likelihood": "gaussian"}}, r"likelihood must be one of"),
        ({"model": {"library": "size"}}, r"library must be one of"),
        ({"model": {"alpha_z": -1.0}}, r"alpha_z must be >= 0"),
        ({"train": {"validation_fraction": 1.0}}, r"validation_fraction must be in \[0, 1\)"),
        ({"train": {"batch_size": 1}}, r"batch_size must be >= 2"),
        ({"model": {"encoder_dims": []}}, r"encoder_dims needs at least one layer"),
        ({"data": {"covariates": [1, 2]}}, r"\[data\] covariates must be a list of strings"),
        ({"model": 3}, r"\[model\] must be a table"),
    ],
)
def test_bad_config_dict(d, message):
    with pytest.raises(ValueError, match=message):
        zipo.ZiPoConfig.from_dict(d)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model]\nalpha_zz = 0.1\n", r"unknown key 'alpha_zz' in \[model\]"),
        ("[train]\nmax_epochs = \"ten\"\n", r"\[train\] max_epochs must be an integer"),
        ("[model]\nencoder_dims = 64\n", r"encoder_dims must be a list of integers"),
        ("[model\nalpha_z = 0.1\n", r"is not valid TOML"),
    ],
)
def test_bad_config_file(tmp_path, text, message):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        zipo.load_config(path)
    assert "cfg.toml" in str(err.value)  # the message says which file


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match=r"config file .*nope\.toml' does not exist"):
        zipo.load_config(tmp_path / "nope.toml")


def test_good_config_file_is_used(tmp_path, pbmc_small):
    """Control for the failures above: a valid file sets exactly what it says."""
    path = tmp_path / "cfg.toml"
    path.write_text("[model]\nencoder_dims = [32, 8]\nalpha_z = 0.5\n[train]\nmax_epochs = 7\n")
    cfg = zipo.load_config(path)
    assert cfg.model.encoder_dims == [32, 8] and cfg.model.alpha_z == 0.5
    assert cfg.train.max_epochs == 7 and cfg.model.alpha_w == 0.1
    model = zipo.ZiPo(pbmc_small, config=path)
    assert model.config.model.encoder_dims == [32, 8]


def test_unknown_option_to_constructor(pbmc_small):
    with pytest.raises(ValueError, match=r"unknown option 'encoder_dim' \(did you mean "
                                         r"'encoder_dims' or 'decoder_dims'\?\)"):
        zipo.ZiPo(pbmc_small, encoder_dim=[64, 16])


def test_wrong_option_type_to_constructor(pbmc_small):
    # a keyword argument is named as the caller wrote it, not as a config section's key
    with pytest.raises(ValueError, match=r"^max_epochs must be an integer, got 'many'$"):
        zipo.ZiPo(pbmc_small, max_epochs="many")
    with pytest.raises(ValueError, match=r"^verbose must be True or False, got 'yes'$"):
        zipo.ZiPo(pbmc_small, verbose="yes")


def test_unknown_option_to_train(pbmc_small):
    model = _model(pbmc_small)
    with pytest.raises(ValueError, match=r"unknown option 'epochs' \(did you mean 'max_epochs'\?\)"):
        model.train(epochs=3)


@pytest.mark.parametrize("option, match", [
    ({"expectation": "mean"}, r"expectation must be 'rate', 'mixture', 'lognorm' or 'posterior', got 'mean'"),
    ({"expectation": "lognorm", "target_sum": 0}, r"target_sum must be a positive number .*1e4"),
    ({"target_sum": float("nan")}, r"target_sum must be a positive number"),
    ({"depth": -1.0}, r"depth must be a positive number \(1 = each cell's own"),
    ({"depth": "2"}, r"depth must be a positive number"),
])
def test_bad_expectation(trained_model, pbmc_small, option, match):
    with pytest.raises(ValueError, match=match):
        trained_model.denoise(pbmc_small, copy=True, **option)


def test_bad_expectation_refused_before_training(pbmc_small, monkeypatch):
    # zipo.denoise() trains first: a typo in the output it asks for must not cost a training
    def train(self, **_):
        raise AssertionError("trained before checking the expectation")
    monkeypatch.setattr(zipo.ZiPo, "train", train)
    with pytest.raises(ValueError, match=r"expectation must be .* got 'mean'"):
        zipo.denoise(pbmc_small, expectation="mean")
    assert "zipo_denoised" not in pbmc_small.layers


# --------------------------------------------------------------------------- untrained model
@pytest.mark.parametrize("method", ["denoise", "get_latent", "evaluate"])
def test_use_before_train(pbmc_small, method):
    model = _model(pbmc_small)
    with pytest.raises(ValueError, match=r"not trained yet; call model\.train\(\) first"):
        getattr(model, method)(pbmc_small)


# --------------------------------------------------------------------------- corrupt model dirs
@pytest.fixture
def model_dir(trained_model, tmp_path):
    path = tmp_path / "model"
    trained_model.save(path)
    zipo.ZiPo.load(path)  # loads before it is damaged
    return path


def _truncate_weights(p):
    data = (p / "weights.pt").read_bytes()
    (p / "weights.pt").write_bytes(data[: len(data) // 2])


def _garbage_json(p):
    (p / "zipo.json").write_bytes(b"\x00\x93 not json {")


def _wrong_json(p):
    (p / "zipo.json").write_text(json.dumps({"hello": "world"}))


def _incomplete_json(p):
    meta = json.loads((p / "zipo.json").read_text())
    del meta["var_names"]
    (p / "zipo.json").write_text(json.dumps(meta))


def _bad_config_in_json(p):
    meta = json.loads((p / "zipo.json").read_text())
    meta["config"]["model"]["encoder_dims"] = "wide"
    (p / "zipo.json").write_text(json.dumps(meta))


def _genes_do_not_fit_weights(p):
    meta = json.loads((p / "zipo.json").read_text())
    meta["var_names"] = meta["var_names"][:-1]
    (p / "zipo.json").write_text(json.dumps(meta))


def _weights_not_tensors(p):
    (p / "weights.pt").write_text("this is text, not a torch file")


def _garbage_history(p):
    (p / "history.csv").write_text('epoch,train_loss\n1,"unterminated\n')


def _remove(name):
    return lambda p: os.remove(p / name)


CORRUPTIONS = {
    "truncated weights": (_truncate_weights, r"weights\.pt' could not be read safely"),
    "weights not a torch file": (_weights_not_tensors, r"weights\.pt' could not be read safely"),
    "garbage zipo.json": (_garbage_json, r"zipo\.json' is corrupt"),
    "zipo.json of something else": (_wrong_json, r"zipo\.json' does not describe a ZiPo model"),
    "zipo.json without genes": (_incomplete_json, r"zipo\.json' is corrupt.*var_names"),
    "bad config in zipo.json": (_bad_config_in_json, r"encoder_dims must be a list of integers"),
    "genes do not fit weights": (_genes_do_not_fit_weights, r"do not fit the saved config"),
    "garbage history": (_garbage_history, r"history\.csv' is corrupt"),
    "missing zipo.json": (_remove("zipo.json"), r"not a ZiPo model directory \(zipo\.json is missing\)"),
    "missing weights.pt": (_remove("weights.pt"), r"has no weights\.pt"),
    "missing history.csv": (_remove("history.csv"), r"has no history\.csv"),
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_corrupt_model_dir(model_dir, damage):
    corrupt, message = CORRUPTIONS[damage]
    corrupt(model_dir)
    with pytest.raises(ValueError, match=message):
        zipo.ZiPo.load(model_dir)


def test_load_from_a_file_or_nowhere(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        zipo.ZiPo.load(tmp_path / "nothing-here")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        zipo.ZiPo.load(tmp_path / "file")


def test_save_into_missing_folder(trained_model, tmp_path):
    with pytest.raises(ValueError, match=r"the folder .* does not exist"):
        trained_model.save(tmp_path / "no" / "such" / "model")


# --------------------------------------------------------------------------- orientation
def test_transposed_matrix_at_training(pbmc_small):
    with pytest.raises(ValueError, match=r"looks transposed: its genes .* look like cell barcodes.*adata\.T"):
        _model(pbmc_small.T.copy())


def test_transposed_matrix_at_inference(pbmc_small, trained_model):
    with pytest.raises(ValueError, match=r"looks transposed: the model's genes are its cell names"):
        trained_model.denoise(pbmc_small.T.copy())


def test_unwritable_model_path(trained_model):
    with pytest.raises(ValueError, match=r"cannot write '/proc/zipo-model'"):
        trained_model.save("/proc/zipo-model")


# --------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, _pbmc_small, trained_model):
    """A small h5ad, its transposed twin, and a saved model, for the CLI cases."""
    folder = tmp_path_factory.mktemp("cli-bad")
    _pbmc_small.write_h5ad(folder / "data.h5ad")
    _pbmc_small.T.copy().write_h5ad(folder / "transposed.h5ad")
    trained_model.save(folder / "model")
    newer = folder / "newer-model"
    trained_model.save(newer)
    meta = json.loads((newer / "zipo.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (newer / "zipo.json").write_text(json.dumps(meta))
    (folder / "unknown-key.toml").write_text("[train]\nmax_epoch = 3\n")
    (folder / "wrong-type.toml").write_text("[model]\nencoder_dims = 'big'\n")
    (folder / "exists.h5ad").write_text("keep me")
    return folder


CLI_CASES = {
    "missing input": (["train", "{f}/nope.h5ad", "--out", "{t}/m"], r"input file .* does not exist"),
    "not an h5ad": (["train", "{f}/unknown-key.toml", "--out", "{t}/m"], r"could not be read as an \.h5ad"),
    "transposed input": (["train", "{f}/transposed.h5ad", "--out", "{t}/m"], r"looks transposed"),
    "unknown config key": (["train", "{f}/data.h5ad", "--config", "{f}/unknown-key.toml", "--out", "{t}/m"],
                           r"unknown key 'max_epoch' in \[train\] \(did you mean 'max_epochs'\?\)"),
    "wrong config type": (["train", "{f}/data.h5ad", "--config", "{f}/wrong-type.toml", "--out", "{t}/m"],
                          r"encoder_dims must be a list of integers"),
    "existing model dir": (["train", "{f}/data.h5ad", "--out", "{f}/model"], r"already exists.*--overwrite"),
    "existing output file": (["denoise", "{f}/model", "{f}/data.h5ad", "--out", "{f}/exists.h5ad"],
                             r"already exists.*--overwrite"),
    "unwritable output": (["denoise", "{f}/model", "{f}/data.h5ad", "--out", "/proc/zipo-out.h5ad"],
                          r"cannot write '/proc/zipo-out.h5ad'"),
    "output folder missing": (["denoise", "{f}/model", "{f}/data.h5ad", "--out", "{t}/no/such/out.h5ad"],
                              r"folder .* does not exist"),
    "newer model format": (["denoise", "{f}/newer-model", "{f}/data.h5ad", "--out", "{t}/o.h5ad"],
                           rf"format version {FORMAT_VERSION + 1}, newer than this ZiPo"),
    "not a model dir": (["denoise", "{t}", "{f}/data.h5ad", "--out", "{t}/o.h5ad"], r"not a ZiPo model directory"),
    "transposed at denoise": (["denoise", "{f}/model", "{f}/transposed.h5ad", "--out", "{t}/o.h5ad"],
                              r"looks transposed"),
    "resume without checkpoint": (["train", "{f}/data.h5ad", "--out", "{t}/m", "--resume"],
                                  r"no checkpoint to resume from"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input(case, cli_files, tmp_path, capsys):
    from zipo.cli import main

    args, message = CLI_CASES[case]
    args = [a.format(f=cli_files, t=tmp_path) for a in args] + ["--quiet"] * (args[0] == "train")
    before = sorted(p.name for p in cli_files.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert __import__("re").search(message, err), err
    # Nothing half-written: no new files beside the inputs, nothing in the scratch folder.
    assert sorted(p.name for p in cli_files.iterdir()) == before
    assert (cli_files / "exists.h5ad").read_text() == "keep me"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- R function
R_CASES = {
    "no such assay": ('denoise(sce, assay = "raw")', r"assay 'raw' is not in the object"),
    "negative counts": ('{ m <- as.matrix(counts(sce)); m[1, 1] <- -2; counts(sce) <- m; denoise(sce) }',
                        r"negative values"),
    "non-integer counts": ('{ counts(sce) <- counts(sce) / 3; denoise(sce) }', r"non-integer values"),
    "NA counts": ('{ m <- as.matrix(counts(sce)); m[2, 2] <- NA; counts(sce) <- m; denoise(sce) }',
                  r"NA/NaN values"),
    "covariate not in colData": ('denoise(sce, covariates = "batch")', r"covariate 'batch' is not a column"),
    "covariate with NA": ('{ sce$groups[1] <- NA; denoise(sce, covariates = "groups") }',
                          r"covariate 'groups' has 1 NA values"),
    "not counts": ("denoise(as.data.frame(as.matrix(counts(sce))))",
                   r"needs a SingleCellExperiment, a Seurat object or a genes x cells count "
                   r"matrix .*not a data.frame; .*pass as.matrix\(x\)"),
    "empty cell": ('{ m <- as.matrix(counts(sce)); m[, 3] <- 0; counts(sce) <- m; denoise(sce) }',
                   r"1 cells have zero counts"),
    "bad option type": ('denoise(sce, epochs = 1, batch_size = "big")',
                        r'^batch_size must be a whole number, got "big" *$'),
}


@pytest.fixture(scope="module")
def r_messages(tmp_path_factory):
    """Runs every R case in one Rscript session (R and reticulate start once), each on its own
    copy of the data (local()), and collects the error messages. Needs R with the zipo package and a NumPy < 2 environment (.venv-r)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("Rscript") is None or int(np.__version__.split(".")[0]) >= 2:
        pytest.skip("the R cases run in the NumPy < 2 environment R uses (.venv-r) with R installed")
    from conftest import R_READ_PBMC_SMALL_SCE

    folder = tmp_path_factory.mktemp("r-bad")
    cases = "\n".join(
        f'cat("{name}\\t", gsub("\\n", " ", tryCatch(local({{ {code}; "NO ERROR" }}), '
        f'error = function(e) conditionMessage(e))), "\\n", sep = "")'
        for name, (code, _) in R_CASES.items()
    )
    script = folder / "cases.R"
    script.write_text(R_READ_PBMC_SMALL_SCE + "suppressPackageStartupMessages(library(zipo))\n" + cases + "\n")
    env = dict(os.environ, RETICULATE_PYTHON=sys.executable, HOME=str(folder))
    done = subprocess.run(["Rscript", str(script)], capture_output=True, text=True, env=env, timeout=600)
    if "there is no package called" in done.stderr:
        pytest.skip("the zipo R package is not installed")
    assert done.returncode == 0, done.stderr
    return dict(line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)


@pytest.mark.parametrize("case", list(R_CASES))
def test_r_bad_input(case, r_messages):
    assert __import__("re").search(R_CASES[case][1], r_messages[case]), r_messages[case]
