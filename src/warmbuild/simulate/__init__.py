"""Fleet simulation and capacity planning: how many builders, how many slots, which policy.

A discrete-event simulation of a build fleet (`engine`) runs one routing policy (`policies`) over a
workload (`workload`: synthetic, or replayed from `warmbuild history export`) and yields every
build's outcome (`model`), summarised and charted by `report`; `planner` searches pool sizes.
The warmbuild policy calls the real placement code (affinity, policy); nothing here does IO
except `report`'s files and charts.
"""

from __future__ import annotations

from .engine import InvariantViolation, Simulation
from .model import PolicyRun, SimulationConfig, Workload
from .policies import POLICIES, make_policy


def run_policy(workload: Workload, policy: str, config: SimulationConfig = SimulationConfig()) -> PolicyRun:
    """Simulate `workload` under one policy."""
    return Simulation(workload, make_policy(policy, config.warmbuild, config.dedicated), config).run()


def compare(workload: Workload, policies=POLICIES, config: SimulationConfig = SimulationConfig()) -> list[PolicyRun]:
    """The same arrivals under each policy."""
    return [run_policy(workload, name, config) for name in policies]


__all__ = ["POLICIES", "InvariantViolation", "PolicyRun", "SimulationConfig", "Workload", "compare", "run_policy"]
