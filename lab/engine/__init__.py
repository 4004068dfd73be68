"""The lab's own explicit decode loop with the five technique slots."""
from lab.engine.decode import Engine, Generation, GenerationSettings

__all__ = ["Engine", "Generation", "GenerationSettings"]
