"""Argument checks shared by the core functions: a clear ValueError, never a silent NaN."""

from __future__ import annotations

import torch


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise if the named tensors do not all have the shape of the first one."""
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.shape != first.shape:
            raise ValueError(
                f"{name}: expected shape {tuple(first.shape)} (the shape of {first_name}), "
                f"got {tuple(t.shape)}")


def check_mask_not_empty(mask: torch.Tensor, name: str = "mask") -> None:
    if not bool(mask.any()):
        raise ValueError(f"{name}: no position is set, so there is nothing to average over")


def check_floating(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def check_ndim(t: torch.Tensor, ndim: int, name: str, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {layout}, got shape {tuple(t.shape)}")


def check_group_size(batch: int, group_size: int, name: str = "scores") -> None:
    if group_size < 1:
        raise ValueError(f"group_size: expected a positive integer, got {group_size}")
    if batch % group_size != 0:
        raise ValueError(
            f"group_size: {group_size} does not divide the batch of {batch} {name}; the batch must "
            f"hold whole groups of {group_size} samples of the same prompt")
