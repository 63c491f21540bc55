"""The web process's CPU budget (gotorch.web.server.CpuBudget), with a clock and a CPU counter in hand."""

from __future__ import annotations

from gotorch.web.server import CpuBudget


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0


def test_requests_go_at_once_within_the_burst_then_at_the_budgets_pace() -> None:
    c = Clocks()
    budget = CpuBudget(0.05, 0.1, cpu=lambda: c.cpu, clock=lambda: c.wall)
    assert budget.wait() == 0.0
    c.cpu += 0.08  # requests used most of the burst at once
    assert budget.wait() == 0.0
    c.cpu += 0.07  # 0.05 s of CPU in debt: at 5 % of a CPU that is repaid in 1 s
    assert abs(budget.wait() - 1.0) < 1e-9
    c.wall += 0.5
    assert abs(budget.wait() - 0.5) < 1e-9
    c.wall += 0.6
    assert budget.wait() == 0.0


def test_idle_time_refills_the_budget_only_up_to_the_burst() -> None:
    c = Clocks()
    budget = CpuBudget(0.05, 0.1, cpu=lambda: c.cpu, clock=lambda: c.wall)
    c.wall += 3600  # an hour without requests
    assert budget.wait() == 0.0
    c.cpu += 0.3  # a burst bigger than the bucket: the rest is debt, not credit saved up
    assert abs(budget.wait() - 4.0) < 1e-9
