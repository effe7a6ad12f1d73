import pytest

from bench.tuning import variant_policy, variant_tuning
from policies.adaptive import SlackPolicy
from policies.tuning import TUNING

ACCURACY = {0.35: 0.6, 1.0: 0.7}


def test_each_variant_names_the_tuning_it_replays():
    assert variant_tuning("server") is TUNING
    tuned = variant_tuning("tail_quantile=0.9+arrival_burst_z=0")
    assert (tuned.tail_quantile, tuned.arrival_burst_z) == (0.9, 0.0)
    assert tuned.sustainable_utilization == TUNING.sustainable_utilization  # the rest stays the server's
    assert variant_policy("tail_quantile=0.9", ACCURACY).tuning.tail_quantile == 0.9
    assert isinstance(variant_policy("slack", ACCURACY), SlackPolicy)


@pytest.mark.parametrize("variant", ["p95+risk", "tail_quantile", "narrowness=2", "tail_quantile=high"])
def test_an_unknown_variant_is_refused(variant):
    with pytest.raises(SystemExit, match="variant"):
        variant_tuning(variant)
