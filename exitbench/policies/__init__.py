"""exitbench.policies: exit policies, their registry, replay and sweeps over recorded block statistics."""

from exitbench.policies.arrays import BlockArrays, DynamicArrays, RecordingError
from exitbench.policies.base import POLICIES, Param, Policy, PolicyError, Requirement, parse_policy

__all__ = ["BlockArrays", "DynamicArrays", "RecordingError", "POLICIES", "Param", "Policy", "PolicyError",
           "Requirement", "parse_policy"]
