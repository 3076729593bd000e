"""The ZiPo network: deep encoder with residuals to the latents, shallow decoder heads.

    h_0 = T(x)                                   log1p input (zeros stay zeros)
    h_i = BN(act(W_i h_{i-1} + b_i))             i = 1..t
    U   = h_t + sum_{i<t} R_i h_i                residuals (R_i linear, no bias)
    V   = [U, covariates]
    log l   = LibNet(V)                          hidden 16, 4 by default; or, with
                                                 library = "observed", log sum_g x_g
                                                 - log sum_g (1 - pi_g) mu_g
    r       = A_z V + B_z                        zero-inflation logit (ZIP/ZINB)
    log mu  = log_softmax(A_mu V + B_mu)         gene proportions
    log th  = b tanh((A_th V + B_th) / b)        NB inverse dispersion per cell and gene,
                                                 theta in (1e-4, 1e4) (b = log 1e4); or,
                                                 with dispersion = "gene", b tanh(t_g / b)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..distributions import likelihood_flags
from .sparse import csr_rows, csr_tensor, sparse_linear

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ModelConfig

#: The module of each activation the config names (``zipo.option_types.ACTIVATIONS``).
ACTIVATION_MODULES = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


@dataclass
class NetworkOutput:
    latent: torch.Tensor  # U, cells x latents
    log_library: torch.Tensor  # log l, cells
    log_mu: torch.Tensor  # cells x genes, logsumexp over genes = 0
    logit_z: torch.Tensor | None  # cells x genes, None without zero inflation
    log_theta: torch.Tensor | None  # cells x genes, None for Poisson
    # cells x latents, the log variance of q(z | x) around ``latent`` (alpha_kl > 0 only)
    latent_log_var: torch.Tensor | None = None

    def float(self) -> "NetworkOutput":
        """All outputs in float32 (after a mixed-precision forward pass)."""
        def f(t):
            return t.float() if t is not None else None
        return NetworkOutput(f(self.latent), f(self.log_library), f(self.log_mu),
                             f(self.logit_z), f(self.log_theta), f(self.latent_log_var))

    @property
    def log_mean(self) -> torch.Tensor:
        """log m = log l + log mu, formed in log space."""
        return self.log_library[:, None] + self.log_mu


def _block(n_in: int, n_out: int, activation: str, batch_norm: bool) -> nn.Sequential:
    """linear -> activation -> batch norm, the unit of every hidden layer."""
    layers: list[nn.Module] = [nn.Linear(n_in, n_out), ACTIVATION_MODULES[activation]()]
    if batch_norm:
        layers.append(nn.BatchNorm1d(n_out))
    return nn.Sequential(*layers)


class ZiPoNetwork(nn.Module):
    def __init__(self, n_genes: int, n_covariates: int, config: ModelConfig):
        super().__init__()
        self.n_genes = n_genes
        self.n_covariates = n_covariates
        self.input_transform = config.input_transform
        self.zero_inflated, self.negative_binomial = likelihood_flags(config.likelihood)
        act, bn = config.activation, config.batch_norm

        dims = [n_genes, *config.encoder_dims]
        self.encoder = nn.ModuleList(
            _block(dims[i], dims[i + 1], act, bn) for i in range(len(dims) - 1)
        )
        n_latent = config.encoder_dims[-1]
        self.residuals = nn.ModuleList(
            nn.Linear(d, n_latent, bias=False) for d in config.encoder_dims[:-1]
        ) if config.residuals else nn.ModuleList()
        # alpha_kl > 0: a variational bottleneck, q(z | x) = N(U, diag exp(log_var(U))).
        self.latent_log_var = nn.Linear(n_latent, n_latent) if config.alpha_kl > 0 else None

        n_v = n_latent + n_covariates
        dec = [n_v, *config.decoder_dims]
        self.decoder = nn.Sequential(
            *(_block(dec[i], dec[i + 1], act, bn) for i in range(len(dec) - 1))
        )
        # With hidden decoder layers the heads read the covariates again beside the last one,
        # so a covariate's effect on a gene stays one linear term on the log scale (through the
        # layers alone, predicting at another batch removed 8% of a simulated batch effect
        # instead of a quarter).
        n_d = dec[-1] + (n_covariates if config.decoder_dims else 0)
        self.mu_head = nn.Linear(n_d, n_genes)
        self.z_head = nn.Linear(n_d, n_genes) if self.zero_inflated else None
        per_cell = config.dispersion == "gene-cell"
        self.theta_head = (nn.Linear(n_d, n_genes) if self.negative_binomial and per_cell
                           else None)
        # dispersion = "gene": one raw log theta per gene (starts at theta = 1, as scVI's does)
        self.gene_log_theta = (nn.Parameter(torch.zeros(n_genes))
                               if self.negative_binomial and not per_cell else None)

        # "observed": log l is the log of the input's total counts, and there is no LibNet.
        self.observed_library = config.library == "observed"
        lib = [n_v, *config.library_dims]
        self.library_net = None if self.observed_library else nn.Sequential(
            *(_block(lib[i], lib[i + 1], act, bn) for i in range(len(lib) - 1)),
            nn.Linear(lib[-1], 1),
        )
        # Cells' median library size, used by the normalize_log1p input transform.
        self.register_buffer("target_library", torch.tensor(1.0))

    @classmethod
    def seeded(cls, n_genes: int, n_covariates: int, config: ModelConfig, seed: int) -> "ZiPoNetwork":
        """A network whose initial weights are drawn from a generator of its own seeded with
        ``seed``: torch's global random state is neither used nor changed."""
        net = cls._unset(n_genes, n_covariates, config)
        net.reset_parameters(torch.Generator().manual_seed(seed))
        return net

    @classmethod
    def from_weights(cls, n_genes: int, n_covariates: int, config: ModelConfig,
                     weights: dict[str, torch.Tensor]) -> "ZiPoNetwork":
        """A network holding ``weights`` (a state dict, which must set every tensor)."""
        net = cls._unset(n_genes, n_covariates, config)
        net.load_state_dict(weights)
        return net

    @classmethod
    def _unset(cls, n_genes: int, n_covariates: int, config: ModelConfig) -> "ZiPoNetwork":
        """The network's layers, their values to be set by the caller. The layers' own
        initialisation draws from torch's global generator, whose state is put back
        afterwards. (Building on the meta device instead would draw nothing, but it imports
        sympy: 0.3 s and ~80 MB on every new model.)"""
        with torch.random.fork_rng(devices=[]):
            return cls(n_genes, n_covariates, config)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Every parameter and buffer at its starting value; the linear layers' weights are
        drawn from ``generator`` as torch's own initialisation draws them (same distributions,
        layers in the order they are built), so a seed gives the weights that seeding torch's
        global generator before building the network gives."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.in_features) if module.in_features else 0.0
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
        if self.gene_log_theta is not None:
            self.gene_log_theta.zero_()
        self.target_library.fill_(1.0)

    # What train.decoder_lr_factor leaves at the base learning rate: the encoder, and the
    # dispersion, which at the decoder's faster rate moved the posterior output towards each
    # cell's own counts and away from the simulation's true rates (docs, history: "A faster
    # decoder").
    BASE_RATE_MODULES = ("encoder", "residuals", "latent_log_var", "theta_head", "gene_log_theta")

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(the parameters trained at the base learning rate: the encoder, counts -> latents,
        and the dispersion; the rest: decoder layers, mean and zero-inflation heads, library
        network), for ``train.decoder_lr_factor``."""
        base, rest = [], []
        for name, p in self.named_parameters():
            (base if name.split(".")[0] in self.BASE_RATE_MODULES else rest).append(p)
        return base, rest

    @property
    def first_layer(self) -> nn.Linear:
        """The genes -> first-encoder-layer map whose weights are regularised and pruned."""
        return self.encoder[0][0]

    @torch.no_grad()
    def initialise_from_data(
        self, gene_proportions: torch.Tensor, mean_log_library: float, median_library: float
    ) -> None:
        """Start the mean and library heads at the data's average cell (our choice, it saves
        the first epochs of learning the per-gene offsets of a 30k-way softmax)."""
        self.mu_head.bias.copy_(torch.log(gene_proportions))
        if len(self.decoder):
            # Sigmoid units average ~0.5, so random head weights would shift each gene's first
            # rate at random; from zero weights the first rates are the gene proportions.
            self.mu_head.weight.zero_()
        if self.library_net is not None:
            self.library_net[-1].bias.fill_(mean_log_library)
        self.target_library.fill_(median_library)

    @staticmethod
    def input_totals(x: torch.Tensor) -> torch.Tensor:
        """Each cell's total counts (at least 1) of a dense or sparse CSR batch."""
        if x.layout == torch.sparse_csr:
            values = x.values()
            lib = torch.zeros(x.shape[0], dtype=values.dtype, device=values.device)
            lib = lib.index_add_(0, csr_rows(x.crow_indices()), values)
        else:
            lib = x.sum(dim=1)
        return lib.clamp_min(1.0)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.layout == torch.sparse_csr:
            return self._transform_sparse(x)
        if self.input_transform == "normalize_log1p":
            x = x * (self.target_library / self.input_totals(x))[:, None]
        return torch.log1p(x)

    def _transform_sparse(self, x: torch.Tensor) -> torch.Tensor:
        """The same transform on the non-zeros of a sparse CSR batch (both keep zeros zero)."""
        values = x.values()
        if self.input_transform == "normalize_log1p":
            rows = csr_rows(x.crow_indices())
            values = values * (self.target_library / self.input_totals(x))[rows]
        return csr_tensor(x.crow_indices(), x.col_indices(), torch.log1p(values), x.shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Counts (cells x genes, dense or sparse CSR) -> latents U."""
        h = self.transform_input(x)
        hidden = []
        for i, layer in enumerate(self.encoder):
            if i == 0 and h.layout == torch.sparse_csr:
                # The first layer's cost then grows with the batch's non-zeros, not cells x genes.
                h = layer[1:](sparse_linear(h, self.first_layer.weight, self.first_layer.bias))
            else:
                h = layer(h)
            hidden.append(h)
        u = hidden[-1]
        for r, h_i in zip(self.residuals, hidden[:-1]):
            u = u + r(h_i)
        return u

    def decode(self, u: torch.Tensor, covariates: torch.Tensor,
               log_library: torch.Tensor | None = None) -> NetworkOutput:
        """The heads from latents U; ``log_library`` (cells) is required with the observed
        library and ignored (LibNet predicts it) otherwise."""
        v = torch.cat([u, covariates], dim=1) if self.n_covariates else u
        d = self.decoder(v)
        if self.n_covariates and len(self.decoder):
            d = torch.cat([d, covariates], dim=1)
        log_mu = torch.log_softmax(self.mu_head(d), dim=1)
        logit_z = self.z_head(d) if self.z_head is not None else None
        if self.library_net is not None:
            log_library = self.library_net(v).squeeze(1)
        elif log_library is None:
            raise ValueError("library = 'observed': decode needs the input's log total counts")
        elif logit_z is not None:
            log_library = log_library - self.log_kept_fraction(log_mu, logit_z)
        return NetworkOutput(
            latent=u,
            log_library=log_library,
            log_mu=log_mu,
            logit_z=logit_z,
            log_theta=self._log_theta(d),
        )

    def _log_theta(self, d: torch.Tensor) -> torch.Tensor | None:
        """log theta, cells x genes (a per-gene theta is broadcast over the batch's cells)."""
        if self.theta_head is not None:
            return self._bounded_log_theta(self.theta_head(d))
        if self.gene_log_theta is not None:
            return self._bounded_log_theta(self.gene_log_theta).expand(d.shape[0], -1)
        return None

    @staticmethod
    def log_kept_fraction(log_mu: torch.Tensor, logit_z: torch.Tensor) -> torch.Tensor:
        """log sum_g (1 - pi_g) mu_g: the share of a cell's rate l mu that zero inflation lets
        through. The observed library divides the cell's total by it, so the expected counts
        (1 - pi) l mu sum to the total while l mu, the denoised rate, counts the molecules the
        zero inflation removed as well (without this, l mu summed to the reduced total and fell
        below the simulation's true rates)."""
        return torch.logsumexp(log_mu + torch.nn.functional.logsigmoid(-logit_z), dim=1)

    # Inverse dispersion kept within (1e-4, 1e4), as DCA clips it: unbounded, the head drove
    # theta to 0 (lgamma(0) = inf) or to e^24 (alpha_theta * theta^2 swamped the loss) on PBMC.
    # tanh keeps the bound smooth, so gradients never stop dead at a clip.
    LOG_THETA_BOUND = 9.2103  # log(1e4)

    def _bounded_log_theta(self, raw: torch.Tensor) -> torch.Tensor:
        return self.LOG_THETA_BOUND * torch.tanh(raw / self.LOG_THETA_BOUND)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor,
                noise: torch.Generator | None = None) -> NetworkOutput:
        """The outputs for counts ``x`` at ``covariates``. ``noise`` draws the latents' noise
        when training with ``alpha_kl`` > 0 (the trainer passes its own; None: torch's global
        generator, as ``torch.randn``)."""
        u = self.encode(x)
        if self.latent_log_var is None:
            return self.heads(u, x, covariates)
        # Training decodes a draw from q(z | x); inference decodes its mean U, and the latents
        # reported are U in both.
        log_var = self.latent_log_var(u)
        if self.training:
            eps = torch.randn(u.shape, generator=noise, device=u.device, dtype=u.dtype)
            z = u + eps * torch.exp(0.5 * log_var)
        else:
            z = u
        return replace(self.heads(z, x, covariates), latent=u, latent_log_var=log_var)

    def heads(self, u: torch.Tensor, x: torch.Tensor, covariates: torch.Tensor) -> NetworkOutput:
        """The outputs from latents ``u`` of the counts ``x`` at ``covariates`` (the latents do
        not depend on covariates, so one encoding serves any covariate values)."""
        # Under mixed precision only the encoder runs in low precision: the heads set the
        # rates (a softmax over thousands of genes) and stay float32.
        with torch.autocast(u.device.type, enabled=False):
            log_library = (torch.log(self.input_totals(x).float()) if self.observed_library
                           else None)
            return self.decode(u.float(), covariates.float(), log_library)
