"""FedAvg: the sample-weighted mean of copies of one model."""

import pytest
import torch

from splitvit.models import create_model
from splitvit.train.fedavg import fedavg


def states(n):
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(create_model("vit_nano_patch8_32", num_classes=3, depth=1).state_dict())
    return out


def test_weighted_by_samples():
    a, b, c = states(3)
    avg = fedavg([a, b, c], [100, 300, 600])
    for k in a:
        assert torch.allclose(avg[k], 0.1 * a[k] + 0.3 * b[k] + 0.6 * c[k], atol=1e-6)


def test_equal_copies_average_to_themselves_and_one_weight_picks_one():
    (a,) = states(1)
    assert all(torch.equal(v, a[k]) for k, v in fedavg([a, a, a], [1, 2, 3]).items())
    a, b = states(2)
    assert all(torch.equal(v, b[k]) for k, v in fedavg([a, b], [0, 5]).items())


def test_integer_entries_must_agree_and_copies_must_match():
    a, b = states(2)
    a["count"], b["count"] = torch.tensor(3), torch.tensor(3)
    assert fedavg([a, b], [1, 1])["count"].item() == 3
    b["count"] = torch.tensor(4)
    with pytest.raises(ValueError, match="integer entry"):
        fedavg([a, b], [1, 1])
    with pytest.raises(ValueError, match="keys and shapes"):
        fedavg([a, {k: v for k, v in a.items() if k != "head.bias"}], [1, 1])
    with pytest.raises(ValueError, match="one weight per state"):
        fedavg([a], [1, 2])
    with pytest.raises(ValueError, match="positive sum"):
        fedavg([a, a], [0, 0])
