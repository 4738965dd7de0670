"""Timestep-forcing Pipeline Parallelism: the LiveAvatar stream on any number of GPUs.

    from pipeline.tpp import Engine, EngineConfig
    engine = Engine(EngineConfig.cuda(4, preset="liveavatar-14b", checkpoint_dir=root))
    stream = engine.open(request)          # the single-device generator's stream API

See pipeline/tpp/engine.py for the schedule.
"""

from pipeline.tpp.config import EngineConfig
from pipeline.tpp.engine import Engine, EngineError, EngineStream

__all__ = ["Engine", "EngineConfig", "EngineError", "EngineStream"]
