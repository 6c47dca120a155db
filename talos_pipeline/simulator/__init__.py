"""Offline upstream simulator: the GitHub releases API and the Talos Image Factory on loopback.

Used by the offline demo, the tests and the benchmarks; what it reproduces, and why, is in
docs/talos-upstream.md. Start with `UpstreamSimulator` (server.py).
"""

from .builds import BuildStats
from .factory import VANILLA_SCHEMATIC
from .faults import InjectedFault
from .images import ImageKey
from .profiles import PRODUCTION_RELEASES
from .qcow2 import write_qcow2
from .releases import DEFAULT_RELEASES, SimulatedRelease, load_releases
from .server import UpstreamSimulator

__all__ = [
    "DEFAULT_RELEASES",
    "PRODUCTION_RELEASES",
    "VANILLA_SCHEMATIC",
    "BuildStats",
    "ImageKey",
    "InjectedFault",
    "SimulatedRelease",
    "UpstreamSimulator",
    "load_releases",
    "write_qcow2",
]
