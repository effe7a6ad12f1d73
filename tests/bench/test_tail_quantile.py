import pytest

from bench.tail_quantile import variant_policy
from policies.builtin import ARRIVAL_BURST_Z

ACCURACY = {0.35: 0.6, 1.0: 0.7}


def test_each_variant_names_the_policy_options_it_compares():
    server = variant_policy("p95+risk", ACCURACY)
    assert (server.tail_quantile, server.weigh_risk, server.burst_z, server.idle_wide, server.tail_narrows_only) == \
        (0.95, True, ARRIVAL_BURST_Z, True, True)
    before = variant_policy("p90+mean+strict+shrink", ACCURACY)
    assert (before.tail_quantile, before.weigh_risk, before.burst_z, before.idle_wide, before.tail_narrows_only) == \
        (0.9, False, None, False, False)
    assert variant_policy("p95+risk+burst0.5", ACCURACY).burst_z == 0.5


def test_an_unknown_variant_is_refused():
    with pytest.raises(SystemExit, match="expected pQ"):
        variant_policy("p95+narrow", ACCURACY)


def test_slack_variants_build_the_slack_policy():
    from policies.adaptive import SlackPolicy

    assert isinstance(variant_policy("slack", ACCURACY), SlackPolicy)
    assert variant_policy("slack", ACCURACY).lone_full_core is False
    assert variant_policy("slack+lone", ACCURACY).lone_full_core is True
    with pytest.raises(SystemExit, match="slack or slack\\+lone"):
        variant_policy("slack+risk", ACCURACY)
