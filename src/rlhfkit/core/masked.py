"""Masked reductions: the only way rlhfkit reduces over tokens.

Convention: a `*_mask` is 1 (or True) where a token counts and 0 elsewhere. Padded
positions may hold any finite value; they never reach a result. No sentinel fills.
"""

from __future__ import annotations

import torch

from rlhfkit.core._checks import check_same_shape, check_mask_not_empty


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m over `dim` (all elements when None). Padded entries are zeroed with
    `torch.where`, so even a NaN or inf there cannot leak into the sum."""
    check_same_shape(x=x, mask=mask)
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """mean_m(x) = Σ x·m / Σ m, over `dim` (all elements when None).

    Shapes: x, mask (..., T) -> scalar (dim=None) or x with `dim` removed.
    An all-zero mask raises (dim=None); along a dim, rows with an empty mask give 0.
    """
    check_same_shape(x=x, mask=mask)
    if dim is None:
        check_mask_not_empty(mask)
        return masked_sum(x, mask) / mask.sum().to(x.dtype)
    count = mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of x (a scalar).

    σ² = Σ m·(x − μ)² / n, with μ = masked_mean(x, mask) and n = Σ m; with `unbiased`
    (Bessel's correction) the result is multiplied by n / (n − 1), which needs n >= 2.
    """
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        if n < 2:
            raise ValueError(f"mask: unbiased variance needs at least 2 masked entries, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Whitening under a mask (advantage normalisation, N implementation details #13).

    x̂ = (x − μ) / sqrt(σ² + eps), with μ and unbiased σ² over the masked entries.
    With shift_mean=False the mean is added back: x̂ = (x − μ)/σ + μ (scale only, for
    reward whitening). Masked-out positions are returned as 0. Shapes: x, mask (B, T).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding: p_i = (Σ_{j<=i} m_j) − 1, clamped at 0.

    Shapes: attention_mask (B, L) -> (B, L) long. With these, a left-padded row gets the
    same positions (0, 1, 2, ...) as the unpadded sequence, so padding never changes a
    log-probability (N implementation details #3).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
