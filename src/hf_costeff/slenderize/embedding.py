"""Low-rank factorization of the word embedding by truncated SVD (COST-EFF's embedding slenderization)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import update_model_configs


@torch.no_grad()
def factorize_embeddings(model: nn.Module, rank: int) -> float:
    """Replace the word embedding ``E`` ``(V, H)`` by its rank-``rank`` truncated SVD, in place.

    ``word_embeddings`` becomes ``Embedding(V, rank)`` holding ``U[:, :r] * S[:r]`` (same ``padding_idx``) and
    ``word_embeddings_proj`` ``Linear(r, H, bias=False)`` holding ``Vh[:r].T``. An already factorized embedding is
    refactorized from its product. Sets ``config.embedding_rank = rank``.

    Returns:
        The relative Frobenius reconstruction error ``||E - E_r|| / ||E||`` (0.0 at full rank).
    """
    embeddings = model.base_model.embeddings
    table, proj = embeddings.word_embeddings, embeddings.word_embeddings_proj
    weight = table.weight.double()
    full = weight if proj is None else weight @ proj.weight.double().T  # (V, H)
    vocab, hidden = full.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(vocab, hidden):
        raise ValueError(
            f"rank must be an integer in [1, {min(vocab, hidden)}] (min of vocab and hidden), got {rank!r}"
        )
    u, s, vh = torch.linalg.svd(full, full_matrices=False)  # thin SVD: U is (V, H), not (V, V)
    total = float((s**2).sum())
    error = math.sqrt(float((s[rank:] ** 2).sum()) / total) if total > 0 else 0.0
    dtype, device = table.weight.dtype, table.weight.device
    new_table = nn.Embedding(vocab, rank, padding_idx=table.padding_idx, dtype=dtype, device=device)
    new_table.weight.copy_((u[:, :rank] * s[:rank]).to(dtype))
    new_proj = nn.Linear(rank, hidden, bias=False, dtype=dtype, device=device)
    new_proj.weight.copy_(vh[:rank].T.to(dtype))
    new_table.weight.requires_grad_(table.weight.requires_grad)
    new_proj.weight.requires_grad_(table.weight.requires_grad)
    embeddings.word_embeddings, embeddings.word_embeddings_proj = new_table, new_proj
    update_model_configs(model, embedding_rank=rank)
    return error


__all__ = ["factorize_embeddings"]
