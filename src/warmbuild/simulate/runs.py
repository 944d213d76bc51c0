"""One policy, or each, over the same workload: the simulator's entry points."""

from __future__ import annotations

from .engine import Simulation
from .model import POLICIES, PolicyRun, SimulationConfig, Workload
from .policies import make_policy


def run_policy(workload: Workload, policy: str, config: SimulationConfig = SimulationConfig()) -> PolicyRun:
    """Simulate `workload` under one policy."""
    return Simulation(workload, make_policy(policy, config.warmbuild, config.dedicated), config).run()


def compare(workload: Workload, policies=POLICIES, config: SimulationConfig = SimulationConfig()) -> list[PolicyRun]:
    """The same arrivals under each policy."""
    return [run_policy(workload, name, config) for name in policies]
