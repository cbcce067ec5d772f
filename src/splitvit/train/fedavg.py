"""FedAvg (McMahan et al. 2017): the sample-weighted mean of several copies of one model's state.

SplitFed averages the clients' halves (and, in SplitFed-V1, the server-half copies) this way at the
end of each round, weighting each copy by the samples it trained on.
"""

from __future__ import annotations

import torch


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i w_i state_i / sum_i w_i`` for every floating-point entry, in float64 then cast back.

    Integer entries (counters such as BatchNorm's ``num_batches_tracked``) cannot be averaged: they
    must agree, and are taken as they are. The states must hold the same keys and shapes.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"fedavg needs one weight per state; got {len(states)} states and {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"fedavg weights must be >= 0 with a positive sum, got {weights}")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != set(keys) or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"state {i} does not have the keys and shapes of state 0: not copies of one model")
    total = float(sum(weights))
    out = {}
    for k in keys:
        first = states[0][k]
        if not first.is_floating_point():
            if any(not torch.equal(s[k], first) for s in states[1:]):
                raise ValueError(f"{k} is an integer entry that differs between the copies: it cannot be averaged")
            out[k] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += s[k].to(torch.float64) * (w / total)
        out[k] = acc.to(first.dtype)
    return out
