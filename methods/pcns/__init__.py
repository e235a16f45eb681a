"""PCNS: PCA Network Shrinking (P. Rolet, unpublished research draft, Sep 29 2022; no public code).

docs/methods/pcns.md is the method's description (the draft is not public): the equations,
every choice made where the draft is silent, the options. This package is the reference
implementation; measurements made while building it: results/pcns-notes.md. "Sec." below
numbers the draft's sections as docs/methods/pcns.md cites them.

Modules by job: `sites` (where PCNS applies, from the model's Structure), `algebra` (the
activation, im2col, Gram PCA, normal equations), `planning` (layers, widths, parameter
projection), `passes` (the calibration passes and solves), `surgery` (new layers, P into the
consumer), `diagnostics` (error table, parameter split), `shrinking` (one shrink, pass by pass),
`method` (the registered `pcns` method).

For one hidden layer l, notation of the draft's sec. 1.4 (bias = weight on a trailing input 1):
  S_l = W_l X_{l-1},  X_l = sigma(S_l)  (n x B over a calibration batch of B samples).
  Step 1 (sec. 2.1): transposed outputs TO_j = row j of X_l.
  Step 2 (sec. 2.2, eq. 3): TO_j ~ TO_hat + sum_{i<=M} lambda_ji EV_i with TO_hat the mean TO
     (mean over neurons, per sample; the draft writes a sum but calls it the mean vector),
     EV_i the top eigenvectors in R^B and lambda_ji = <TO_j - TO_hat, EV_i>. Computed through the
     n x n Gram matrix, never B x B: G = H X X^T H (H = I - 11^T/n), G u_i = Lambda_i u_i, so
     EV_i = X^T u_i / sqrt(Lambda_i) and lambda_ji = sqrt(Lambda_i) u_ji. The centred TOs sum to
     zero, so G has at most n - 1 non-zero eigenvalues: M <= n - 1 and "all components" is M = n - 1.
  Step 3 (sec. 2.3, eq. 4): the shrunk layer has M + 1 neurons, fitted by least squares
     W~_i X_{l-1} = sigma^{-1}(c EV_i) (i <= M) and W~_{M+1} X_{l-1} = sigma^{-1}(TO_hat).
  Step 4 (sec. 2.4, eq. 7): the next layer becomes W_{l+1} P, P = n x (M+1), row j =
     (lambda_j1 / c, ..., lambda_jM / c, 1). For a conv consumer P acts on its input channels at
     every kernel position (bench.surgery.substitute_inputs, no shift).

Conv layers (the draft's sec. 7 "next step"): neurons are channels and every spatial position of
every image is a sample; the least-squares rows are the im2col
patches of the layer input plus a bias column (C_in*k*k + 1 unknowns per neuron). Zero padding
needs no approximation: P has no shift, so the consumer's padding zeros of the new channels are
padding zeros of the old ones.

Statistics: the Gram X X^T (n x n) and the normal equations A^T A, A^T T, ||T||^2 are float64
sums in bench.activations.SumAccumulator (all-reduced under torchrun on the data's device), im2col rows
in float64 chunks of `CHUNK_BYTES`; every calibration forward runs outside autocast in the model's
own dtype (float32), on batches that may be channels_last.

Choices where the draft is silent or leaves a TODO:
- Order (sec. 9.1, 4.6): from the second-to-last layer (the last hidden layer, whose consumer is
  the classifier) down to the first; the classifier is never shrunk. All fits use the network as
  it is before this shrink (the draft's "initial forward pass"): shrinking layer l changes W_l and
  W_{l+1} only, so the fits are independent, but no fit sees the errors of the layers below it.
  `refit: true` (not in the draft) fits the layers bottom-up instead, each on the inputs the
  already-shrunk layers below it produce, to the same targets (the unshrunk network's PCA and TOs);
  the report then also gives the draft order's logit error (`*_norefit`).
- Calibration: one fixed set of `calibration_images` unaugmented training images (2,048) for
  every layer, more if a layer needs `samples_per_unit` x n samples (draft sec. 4.3 "a few times
  the layer size": 10). The error table uses the first `error_images` of them and as
  many held-out images (ctx.calibration(heldout=True)).
- c (draft: a scale, cancels in step 4): c = ev_scale * sqrt(B) * rms(X_l), so c EV_i has the RMS
  of the layer's outputs; LeakyReLU^{-1} is positively homogeneous, so c changes nothing beyond
  float error. `ls_residual` is over the EV columns (c-free), `ls_residual_mean_to` the TO_hat one.
- Sign of EV_i (free in PCA): both signs are fitted in the same pass; the smaller residual wins.
- M: `energy` per layer (smallest M whose eigenvalues reach that fraction of the centred
  variance), or `target_params`: one threshold for all layers bisected so the model has at most
  the target count (within `target_tol_frac`, relative; the count includes every new module). With several
  `transform_epochs`, shrink k of K aims at target^(k/K). Eigen-directions below `EIG_FLOOR_FRAC`
  of the largest are never used. A layer stays as it is when M + 1 >= n (no size gain) unless
  `transform_full_rank`; `layers` restricts the shrink to named layers.
- BN between a layer and its activation: folded in (bench.surgery.fold_bn, running statistics)
  before solving; the target is the pre-activation. The shrunk layer gets a fresh BN that inverts
  its own normalisation with the calibration statistics of the new outputs (running_mean = mean,
  running_var = var, weight = sqrt(var + eps), bias = mean, plus the LS bias when the layer has
  none): the identity in eval mode, trained afterwards like any BN.
- A max pool between the activation and the consumer: maxpool(P e) != P maxpool(e).
  `maxpool: skip` (default; measured best on real data, results/pcns-notes.md) leaves such
  layers alone; `explicit` keeps P as a bias-free, trainable 1x1 conv in front of the pool
  (`MixPool`: exact, but n x (M+1) parameters and the consumer keeps its n inputs; a later
  shrink multiplies the mix by its new P); `commute` moves P past the pool into the consumer
  (inexact). What the mixes cost: `summary()["param_split"]["mix"]` and
  `summary()["mix_consumer_excess"]` (the consumers' unreduced inputs).
- ResNets: only block-internal layers (conv1 of a BasicBlock; conv1 and conv2 of a Bottleneck).
  The residual stream is NOT shrunk: PCNS replaces a layer's neurons by new ones, and the identity
  skip adds the old ones. For a block, `next_err_*` is on conv2's BN output, before the add.
- ReLU (draft sec. 4.5, one sentence): `relu_split` gives each EV_i two neurons fitted by least
  squares to relu(c EV_i) and relu(-c EV_i) (no inverse), P columns (lambda/c, -lambda/c):
  2M + 1 neurons, so a layer shrinks only when 2M + 1 < n.
- Not in the draft: `ls_ridge` (Tikhonov term, relative to the mean diagonal of A^T A).

Error table (draft sec. 4.2, approximations 1-3, per layer with only that layer changed, draft
order's fits): `pca_err` = ||X - X_PCA||^2 / ||X||^2 (approx. 1), `ls_residual` (approx. 2, in
sigma^{-1} space), `out_err_*` = ||P e - x|| / ||x|| for the layer output and `next_err_*` for the
next weighted layer's pre-activation (its BN included), on calibration (`_cal`) and held-out
(`_heldout`) images (approx. 3 = their gap); for the whole shrink `logit_err_*` and
`top1_agreement_*` against the unshrunk model; wall-clock per pass in `timing_s`.

The error table and logit errors are diagnostics: the method computes them after its timed
`on_epoch_end` (in `epoch_metrics`, from a copy of the unshrunk model kept when
`error_images` > 0) so they are not counted as the method's cost; their own wall-clock is in
the report's `diagnostics_s`. `error_images: 0` turns them off.
"""
from methods.pcns.algebra import (apply_layer, components_for, full_weight, gram_pca, im2col, im2col_chunks,
                                  residuals, sigma, sigma_inv, solve_normal)
from methods.pcns.diagnostics import error_table, layer_errors, logit_errors, mix_consumer_excess, param_split
from methods.pcns.method import PCNS
from methods.pcns.passes import draft_ls_pass, gram_pass, refit_pass, solve_layer
from methods.pcns.planning import LayerPlan, choose_widths, plan_layers, projected_params
from methods.pcns.shrinking import Diagnostics, Stopwatch, shrink, shrink_model
from methods.pcns.sites import MixPool, Site, act_slope, check_site, find_sites
from methods.pcns.surgery import apply_surgery, new_producer

__all__ = ["PCNS", "Diagnostics", "LayerPlan", "MixPool", "Site", "Stopwatch", "act_slope", "apply_layer", "apply_surgery",
           "check_site", "choose_widths", "components_for", "draft_ls_pass", "error_table", "find_sites", "full_weight",
           "gram_pass", "gram_pca", "im2col", "im2col_chunks", "layer_errors", "logit_errors", "mix_consumer_excess",
           "new_producer", "param_split", "plan_layers", "projected_params", "refit_pass", "residuals", "shrink",
           "shrink_model", "sigma", "sigma_inv", "solve_layer", "solve_normal"]
