"""How a round's client halves (and SplitFed-V1's server-half copies) are averaged: splitvit's FedAvg
(:func:`~.fedavg.fedavg`), or a Flower strategy (``clients.strategy=FedAvg``, ``FedMedian``, ``Krum``, ...: any
strategy of ``flwr.serverapp.strategy`` whose ``aggregate_train`` needs only the round's replies; docs:
"Flower"), on either engine.

A Flower strategy gets each copy as a reply whose ``ArrayRecord`` holds its floating-point entries in float64
and whose ``MetricRecord`` holds its weight (``num-examples``, the samples it trained on this round); its
aggregate is cast back. In float64 Flower's FedAvg does splitvit's arithmetic operation for operation (the
weight factors ``w / sum(w)``, the products and their sum in client order), so ``clients.strategy=FedAvg``
gives the very run splitvit's FedAvg gives; a test checks it bit for bit. Integer entries (counters) are not
averaged: they must agree, as for splitvit's FedAvg.
"""

from __future__ import annotations

from typing import Callable

import torch

from .fedavg import fedavg


class NothingAggregated(ValueError):
    """A Flower strategy returned no aggregate from the copies it got (too few for it)."""


Mean = Callable[[list[dict[str, torch.Tensor]], list[float]], dict[str, torch.Tensor]]


def averaging(strategy: str | None) -> Mean:
    """The mean of copies of one model's state a run uses: splitvit's FedAvg for None, else Flower's
    ``strategy`` (a class name of ``flwr.serverapp.strategy``, built with its defaults)."""
    if not strategy:
        return fedavg
    try:
        from flwr.serverapp import strategy as strategies
    except ImportError:
        raise ValueError(f"clients.strategy={strategy} is a Flower strategy: pip install -e '.[flower]' "
                         "(Python 3.11 or later), or leave clients.strategy unset for splitvit's FedAvg") from None
    cls = getattr(strategies, strategy, None)
    if not (isinstance(cls, type) and issubclass(cls, strategies.Strategy)) or strategy == "Strategy":
        names = sorted(n for n, c in vars(strategies).items()
                       if isinstance(c, type) and issubclass(c, strategies.Strategy) and c is not strategies.Strategy)
        raise ValueError(f"clients.strategy={strategy} is not a strategy of flwr.serverapp.strategy; one of: "
                         + ", ".join(names))
    try:
        flower = cls()
    except TypeError as e:
        raise ValueError(f"clients.strategy={strategy} cannot be built with its defaults ({e}); use one that can "
                         "(FedAvg, FedMedian, FedTrimmedAvg, Krum, ...)") from None
    try:  # one that needs more than the replies is refused now, not at the first round's end
        averaging_with(cls(), strategy)([{"x": torch.zeros(1)}, {"x": torch.ones(1)}], [1.0, 1.0])
    except NothingAggregated:  # it needs more copies than two (Bulyan): the run's rounds will say
        pass
    return averaging_with(flower, strategy)


def averaging_with(flower, strategy: str) -> Mean:
    """The mean that Flower strategy object ``flower`` (named ``strategy``) computes, round after round."""
    import numpy as np
    from flwr.app import DEFAULT_TTL, Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    rounds = [0]

    def mean(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
        first = states[0]
        floating = [k for k, v in first.items() if v.is_floating_point()]
        rounds[0] += 1
        replies = []
        for i, (s, w) in enumerate(zip(states, weights)):  # each copy as the reply of node i to this round
            content = RecordDict({"arrays": ArrayRecord(array_dict={
                k: Array(np.ascontiguousarray(s[k].detach().cpu().to(torch.float64).numpy())) for k in floating}),
                "metrics": MetricRecord({"num-examples": float(w)})})
            meta = Metadata(run_id=0, message_id=f"{rounds[0]}-{i}", src_node_id=i, dst_node_id=0,
                            reply_to_message_id=f"{rounds[0]}", group_id=str(rounds[0]), created_at=0.0, ttl=DEFAULT_TTL,
                            message_type="train")
            replies.append(Message(content, metadata=meta))
        try:
            arrays, _ = flower.aggregate_train(rounds[0], replies)
        except Exception as e:  # a strategy that needs more than the replies (a server optimizer's start, ...)
            raise ValueError(f"clients.strategy={strategy}: its aggregate_train failed on the round's halves ({e}); "
                             "use a strategy that aggregates the replies alone (FedAvg, FedMedian, FedTrimmedAvg, "
                             "Krum, ...)") from None
        if arrays is None:
            raise NothingAggregated(f"clients.strategy={strategy} aggregated nothing from the round's {len(replies)} "
                                    "halves (it needs more clients in a round)")
        out = {}
        for k, v in first.items():
            if k in arrays:
                out[k] = torch.from_numpy(np.array(arrays[k].numpy())).to(v.dtype).reshape(v.shape)
            else:
                if any(not torch.equal(s[k], v) for s in states[1:]):
                    raise ValueError(f"{k} is an integer entry that differs between the copies: it cannot be averaged")
                out[k] = v.clone()
        return out

    return mean
