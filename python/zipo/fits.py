"""A model of several fits (``train.n_fits``): fits 2 to n of a :class:`~zipo.ZiPo`, each a
ZiPo of one fit on the same data, trained after the first; :meth:`~zipo.ZiPo.denoise` averages
their outputs (:func:`zipo.outputs.write_predictions`). Methods of ``ZiPo`` (:class:`FitsMixin`);
the fits themselves are ``ZiPo.further_fits``, saved and loaded with the model (:mod:`zipo.io`)."""

from __future__ import annotations

import copy
from pathlib import Path

from .presets import SMALL_DATA_CELLS
from .train.checkpoint import has_checkpoint


class FitsMixin:
    """Training the further fits of :class:`~zipo.ZiPo`."""

    # train.n_fits = 0: AUTO_FITS fits on data under AUTO_FITS_BELOW_CELLS cells. Averaging
    # four fits' posterior gained 1.3-4.0% held-out deviance on 80-559 cells and 0.2% on 2,170
    # (docs, history: "Averages of fits on small data"); under 500 cells a fit takes seconds.
    AUTO_FITS, AUTO_FITS_BELOW_CELLS = 4, SMALL_DATA_CELLS

    def _fits_asked(self) -> int:
        """``train.n_fits``, 0 settled by the number of cells."""
        return self.config.train.n_fits or (
            self.AUTO_FITS if self.adata.n_obs < self.AUTO_FITS_BELOW_CELLS else 1)

    def add_fits(self, n_fits: int = 0):
        """Train the fits that a trained model lacks, up to ``n_fits`` in all (0: as many as
        ``train.n_fits = 0`` gives its data), e.g. for a tuning trial's model of one fit; its
        fits are kept as they are, and its config then says ``n_fits``."""
        self._require_trained()
        if self.adata is None:
            raise ValueError("this model was loaded without data; pass adata to ZiPo.load to train it")
        self.config.set_option("train.n_fits", n_fits)
        self._train_further_fits(self._fits_asked(), None, False,
                                 first=2 + len(self.further_fits))
        return self

    def _train_further_fits(self, n_fits: int, checkpoint_dir: str | Path | None,
                            resume: bool, first: int = 2) -> None:
        """Train fits 2 to ``n_fits``, each with this model's configuration from ``seed`` +
        k - 1 (new ones from their own initial weights, trained ones fine-tuned), fit k's
        checkpoints in ``checkpoint_dir/fit-k``: a resumed run resumes each fit that has one,
        and trains the others afresh."""
        tc = self.config.train
        for k in range(first, n_fits + 1):
            config = copy.deepcopy(self.config)
            config.train.seed, config.train.n_fits = tc.seed + k - 1, 1
            new = k - 2 >= len(self.further_fits)
            if new:
                fit = type(self).__new__(type(self))
                # train() gives an untrained fit its own network, seeded from its seed
                fit._init_state(config, self.var_names, self.covariate_encoder, self.network,
                                self.adata, self._summary)
            else:
                fit = self.further_fits[k - 2]
                fit.config = config
            where = None if checkpoint_dir is None else Path(checkpoint_dir) / f"fit-{k}"
            if tc.verbose:
                print(f"zipo: fit {k} of {n_fits} (denoise averages the fits)", flush=True)
            fit.train(checkpoint_dir=where,
                      resume=resume and where is not None and has_checkpoint(where))
            if new:  # kept once trained, so a failed fit never joins the average
                self.further_fits.append(fit)
