"""Fleet simulation and capacity planning: how many builders, how many slots, which policy.

A discrete-event simulation of a build fleet (`engine`) runs one routing policy (`policies`) over a
workload (`workload`: synthetic, or replayed from `warmbuild history export`) and yields every
build's outcome (`model`), summarised and charted by `report`; `planner` searches pool sizes.
The warmbuild policy calls the real placement code (affinity, policy); nothing here does IO
except `report`'s files and charts. `runs` has the entry points; nothing is imported here, so
`warmbuild` starts without loading the simulator.
"""
