"""Small helpers shared by the distillation losses that read labels (dkd, pld, ofa)."""

from __future__ import annotations

import torch

from divlab.errors import ConfigError

from .base import check_pair, position_mask, sanitize


def prepare_with_labels(name: str, target_logits, model_logits, labels, mask, dim: int):
    """Move the class dim last, upcast, and fold labels < 0 (ignore_index, e.g. -100) into the mask.

    Returns (target, model, labels, valid): target/model of shape (..., C) with masked positions
    zeroed, labels (...) in [0, C) (0 where invalid), valid a bool tensor (...) or None.
    """
    check_pair(name, target_logits, model_logits)
    if labels is None:
        raise ConfigError(
            f"Divergence {name!r} needs the true classes: call it with labels=<tensor of class ids>."
        )
    valid = position_mask(name, mask, target_logits, dim)
    labels = torch.as_tensor(labels, device=target_logits.device).long()
    positions = target_logits.movedim(dim, -1).shape[:-1]
    if labels.shape != positions:
        raise ConfigError(
            f"Divergence {name!r}: labels must have the logits' shape without the class dim, "
            f"{tuple(positions)}, got {tuple(labels.shape)}."
        )
    if bool((labels < 0).any()):
        valid = labels >= 0 if valid is None else valid & (labels >= 0)
    if valid is not None:
        labels = torch.where(valid, labels, torch.zeros_like(labels))
    num_classes = target_logits.shape[dim]
    if bool((labels >= num_classes).any()):
        raise ConfigError(f"Divergence {name!r}: labels must be < the number of classes, {num_classes}.")
    target = sanitize(target_logits, valid, dim).movedim(dim, -1)
    model = sanitize(model_logits, valid, dim).movedim(dim, -1)
    return target, model, labels, valid
