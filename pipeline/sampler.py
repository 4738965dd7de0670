"""The 4-step flow-matching sampler: timesteps from diffusers' Euler scheduler, shift 3.

The stream needs the schedule as a table (step i -> timestep, sigma, next sigma) so that any
step of any block can be run on its own (and, in pipeline parallelism, on its own GPU); the
Euler update itself is one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


@dataclass(frozen=True)
class FlowSchedule:
    timesteps: tuple[float, ...]
    """Model timestep of each step (1000 = pure noise)."""
    sigmas: tuple[float, ...]
    """Noise level before each step, and 0.0 after the last (len = steps + 1)."""

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def euler(self, x: torch.Tensor, velocity: torch.Tensor, step: int) -> torch.Tensor:
        """x at sigmas[step] -> x at sigmas[step + 1], float32."""
        return x + (self.sigmas[step + 1] - self.sigmas[step]) * velocity


def flow_schedule(steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> FlowSchedule:
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=num_train_timesteps, shift=shift
    )
    scheduler.set_timesteps(steps)
    return FlowSchedule(
        timesteps=tuple(float(t) for t in scheduler.timesteps),
        sigmas=tuple(float(s) for s in scheduler.sigmas),
    )
