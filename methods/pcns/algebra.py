"""PCNS's tensor algebra (no model state): the activation and its inverse, layers applied
without their hooks, im2col rows of the least squares, the PCA of the neurons' Gram matrix,
the normal-equation solve and its residuals. Statistics are float64 throughout.
See docs/methods/pcns.md for the equations these implement.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

LS_RIDGE_FRAC = 1e-8         # Tikhonov term / mean diagonal of A^T A (float64 Cholesky safety)
EIG_FLOOR_FRAC = 1e-10       # eigen-directions below this fraction of the largest are noise
CHUNK_BYTES = 64 * 2 ** 20   # float64 im2col rows held at once


def sigma(x: torch.Tensor, slope: float) -> torch.Tensor:
    """LeakyReLU with `slope` (0: ReLU)."""
    return F.leaky_relu(x, slope)


def sigma_inv(y: torch.Tensor, slope: float) -> torch.Tensor:
    """LeakyReLU^{-1} (draft sec. 2.3); needs slope > 0."""
    return torch.where(y >= 0, y, y / slope)


def apply_layer(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` without calling the module (so without its hooks: we run inside them)."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    return F.linear(x, layer.weight, layer.bias)


def im2col_chunks(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """(images, rows): float64 least-squares rows [rows, d + 1] (im2col patches or inputs, then a 1)
    of the images `x[images]`, in chunks of about `CHUNK_BYTES`; column order matches
    `layer.weight.reshape(n, -1)`, row order matches `as_samples` of the layer's output."""
    if isinstance(layer, nn.Linear):
        step = max(1, CHUNK_BYTES // (8 * (x.shape[1] + 1)))
    else:
        n_pos = im2col(x[:1], layer).shape[0]
        step = max(1, CHUNK_BYTES // (8 * (x.shape[1] * layer.weight[0, 0].numel() + 1) * n_pos))
    for i in range(0, len(x), step):
        images = slice(i, i + step)
        a = (x[images] if isinstance(layer, nn.Linear) else im2col(x[images], layer)).to(torch.float64)
        yield images, torch.cat([a, a.new_ones(len(a), 1)], 1)


def im2col(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """[N*Ho*Wo, C*kh*kw] patches in `conv.weight.reshape(n, -1)` column order (F.unfold's layout;
    shifted slices of the zero-padded input, several times faster than F.unfold on this CPU)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    n, c, h, w = xp.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    cols = [xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(cols, 2).permute(0, 3, 4, 1, 2).reshape(n * ho * wo, c * kh * kw)


def full_weight(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """[n, d + 1] float64: flattened weights, then the bias (0 if none)."""
    w = layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)
    b = layer.bias.detach().to(torch.float64) if layer.bias is not None else w.new_zeros(w.shape[0])
    return torch.cat([w, b[:, None]], 1)


def gram_pca(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-pairs of H gram H on 1-perp (H centres over neurons): Lambda [n-1] descending, U [n, n-1].

    `gram` = X X^T summed over samples. Restricting to an orthonormal basis Q of 1-perp drops the
    null direction 1/sqrt(n) that centring always creates (Q^T H = Q^T)."""
    n = gram.shape[0]
    h = torch.eye(n, dtype=torch.float64, device=gram.device) - 1.0 / n
    q = torch.linalg.qr(h[:, :n - 1]).Q
    vals, vecs = torch.linalg.eigh(q.T @ gram @ q)
    order = torch.argsort(vals, descending=True)
    return vals[order].clamp_min(0), q @ vecs[:, order]


def components_for(lam: torch.Tensor, threshold: float) -> tuple[int, int]:
    """(M, M_max): smallest M whose eigenvalues reach `threshold` of the total, within the usable ones."""
    usable = int((lam > EIG_FLOOR_FRAC * lam[0]).sum()) if len(lam) and lam[0] > 0 else 0
    if usable == 0:
        return 0, 0
    expl = torch.cumsum(lam[:usable], 0) / lam.sum()
    m = int(torch.searchsorted(expl, torch.tensor(threshold - 1e-12, dtype=expl.dtype, device=expl.device))) + 1
    return min(max(m, 1), usable), usable


def solve_normal(ata: torch.Tensor, att: torch.Tensor, ridge_frac: float) -> torch.Tensor:
    """argmin_W ||A W - T||^2 + r ||W||^2 from A^T A, A^T T (float64), r = ridge_frac * mean diag."""
    eye = torch.eye(len(ata), dtype=ata.dtype, device=ata.device)
    k = ata + ridge_frac * ata.diagonal().mean().clamp_min(1e-300) * eye
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) == 0:
        return torch.cholesky_solve(att, chol)
    return torch.linalg.lstsq(k, att, driver="gelsd" if ata.device.type == "cpu" else None).solution


def residuals(ata: torch.Tensor, att: torch.Tensor, ttt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per target column ||A w - t||^2 from the normal-equation sums."""
    return (ttt - 2 * (w * att).sum(0) + (w * (ata @ w)).sum(0)).clamp_min(0)
