"""Sources a consumer reads: sharded streams (and, later, queues)."""

from streamcore.sources.memory import MemoryStream

__all__ = ["MemoryStream"]
