"""Sources a consumer reads: sharded streams and SQS-style queues."""

from streamcore.sources.localqueue import LocalQueue
from streamcore.sources.memory import MemoryStream
from streamcore.sources.queue import MemoryQueue

__all__ = ["LocalQueue", "MemoryQueue", "MemoryStream"]
