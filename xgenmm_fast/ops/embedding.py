"""LM input embedding with the decoupled vocabulary (SPEC §1.4), and the merge of image tokens into the
packed LM input stream (the step between the perceiver and the decoder in the packed forward).

    input_ids    (N,)            stream ids; ids < num_base read `weight`, ids >= num_base read
                                 `add_weight[id - num_base]` (ids must be < num_base + n_add)
    weight       (V_rows, E)     `embed_tokens.weight`; rows num_base..V_rows-1 are never read
    add_weight   (n_add, E)      `embed_tokens.additional_embedding.weight`
    media_index  (M,)            stream positions that take image tokens instead (distinct)
    tokens       (K, E)          the perceiver output of all images, back to back
    media_source (M,) or None    row of `tokens` for each media position (None: position j takes row j)
    -> embeds    (N, E)          in weight's dtype (the additional rows and the tokens are cast to it)

Gradients: the embedding rows read at media positions get none (those rows are overwritten); a row of
`tokens` shown at several positions gets the sum of their gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def decoupled_embedding_reference(input_ids: torch.Tensor, weight: torch.Tensor, add_weight: torch.Tensor,
                                  num_base: int) -> torch.Tensor:
    """(...) ids -> (..., E) embeddings in weight's dtype, as `model.phi3.DecoupledEmbedding` computes them."""
    is_added = input_ids >= num_base
    base = F.embedding(input_ids.masked_fill(is_added, 0), weight)
    if not bool(is_added.any()):
        return base
    added = F.embedding((input_ids - num_base).clamp(min=0), add_weight)
    return torch.where(is_added[..., None], added.to(base.dtype), base)


def merge_vision_tokens_reference(input_ids: torch.Tensor, weight: torch.Tensor, add_weight: torch.Tensor,
                                  num_base: int, media_index: torch.Tensor, tokens: torch.Tensor | None,
                                  media_source: torch.Tensor | None = None) -> torch.Tensor:
    """Embedding lookup, then image tokens written over the media positions (embedding + index_select +
    index_put, the packed forward's original three steps). Shapes: see the module docstring."""
    embeds = decoupled_embedding_reference(input_ids, weight, add_weight, num_base)
    if media_index.numel() == 0:
        return embeds
    if tokens is None:
        raise ValueError(f"merge_vision_tokens: {media_index.numel()} media positions but no image tokens")
    if media_source is not None:  # positions sharing an image take the same rows
        tokens = tokens.index_select(0, media_source)
    return embeds.index_put((media_index,), tokens.to(embeds.dtype))


dispatch.register("merge_vision_tokens", "reference", merge_vision_tokens_reference)


def merge_vision_tokens(input_ids, weight, add_weight, num_base, media_index, tokens, media_source=None):
    return dispatch.call("merge_vision_tokens", input_ids, weight, add_weight, num_base, media_index, tokens,
                         media_source)
