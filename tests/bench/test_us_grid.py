"""bench.us_grid: paired live rounds become one table cell per (budget, load, policy, width list)."""

import pytest

from bench.us_grid import mean_over_rounds


def live(grid: str, turn: int, attainment: float, per_sent: float, load: float = 1.0) -> dict:
    return {"mode": "live", "budget_ms": 20.0, "load": load, "policy": "max-width", "grid": grid, "round": turn,
            "attainment": attainment, "accuracy_per_sent": per_sent}


def test_rounds_of_a_point_are_averaged_per_width_list_and_simulated_rows_pass_through():
    simulated = {"mode": "simulated", "budget_ms": 20.0, "load": 1.0, "policy": "max-width", "grid": "4 widths",
                 "attainment": 1.0, "accuracy_per_sent": 0.7}
    rows = [live("14 widths", 0, 0.96, 0.60), live("4 widths", 0, 0.90, 0.50),
            live("4 widths", 1, 0.94, 0.56), live("14 widths", 1, 0.98, 0.64),
            live("14 widths", 0, 0.70, 0.40, load=2.0), simulated]
    cells = {(r["mode"], r["load"], r["grid"]): r for r in mean_over_rounds(rows)}
    assert len(cells) == 4
    assert cells["live", 1.0, "14 widths"]["attainment"] == pytest.approx(0.97)
    assert cells["live", 1.0, "14 widths"]["accuracy_per_sent"] == pytest.approx(0.62)
    assert cells["live", 1.0, "4 widths"]["attainment"] == pytest.approx(0.92)
    assert cells["live", 1.0, "4 widths"]["rounds"] == 2
    assert cells["live", 2.0, "14 widths"]["attainment"] == 0.70  # one round: as measured
    assert cells["simulated", 1.0, "4 widths"] == simulated
