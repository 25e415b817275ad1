"""``create_reference_model``: the frozen reference of TRL's classic API."""
from __future__ import annotations

import copy
import logging
from typing import Optional

from torch import nn

logger = logging.getLogger(__name__)

LAYER_PATTERNS = ("transformer.h.{layer}", "model.decoder.layers.{layer}", "gpt_neox.layers.{layer}",
                  "model.layers.{layer}")
"""Where a model's ``num_shared_layers``-th block starts, tried in this order (GPT-2, OPT, GPT-NeoX, Llama)."""


def create_reference_model(model: nn.Module, num_shared_layers: Optional[int] = None,
                           pattern: Optional[str] = None) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, as TRL's ``create_reference_model``.

    With ``num_shared_layers`` the parameters before that block (embeddings and the first layers)
    are shared: frozen in ``model`` and, unlike TRL's deep copy, held once in memory by both.
    ``pattern`` (formatted with ``layer=num_shared_layers``) names where the unshared part starts;
    by default one of :data:`LAYER_PATTERNS` is found in the parameter names.
    """
    names = [name for name, _ in model.named_parameters()]
    if num_shared_layers is None:
        return copy.deepcopy(model).requires_grad_(False).eval()
    candidates = [pattern] if pattern is not None else list(LAYER_PATTERNS)
    found = next((p.format(layer=num_shared_layers) for p in candidates
                  if any(p.format(layer=num_shared_layers) in name for name in names)), None)
    if found is None:
        raise ValueError(f"Layer pattern could not be matched: none of {', '.join(candidates)} (layer="
                         f"{num_shared_layers}) is in the model's parameter names")
    first_unshared = next(ix for ix, name in enumerate(names) if found in name)
    shared = [parameter for ix, (_, parameter) in enumerate(model.named_parameters()) if ix < first_unshared]
    for parameter in shared:
        parameter.requires_grad_(False)
    reference = copy.deepcopy(model, memo={id(parameter): parameter for parameter in shared})
    if first_unshared == len(names):
        logger.warning("Pattern passed or found, but no layers matched in the model. Check for a typo.")
    return reference.requires_grad_(False).eval()
