"""streamcore: fast batch consumers for streams and queues, with AWS Lambda semantics.

>>> import streamcore as sc
>>> clock = sc.VirtualClock()
>>> stream = sc.MemoryStream(shards=2, clock=clock)
>>> _ = stream.put([{"key": "a", "n": 1}, {"key": "b", "n": 2}])
>>> app = sc.App(clock=clock)
>>> seen = []
>>> @app.consumer(stream, batch_size=10)
... def handle(batch):
...     seen.extend(batch.records.column("n").to_pylist())
>>> app.run(until_idle=True)
>>> sorted(seen)
[1, 2]
"""

from streamcore.aggregate import Aggregator, window_start
from streamcore.app import App
from streamcore.batch import Batch, BatchFailures, Window
from streamcore.checkpoints import CheckpointStore, MemoryCheckpoints
from streamcore.clock import Clock, SystemClock, VirtualClock
from streamcore.durable import DirectoryCheckpoints
from streamcore.errors import (
    AppStateError,
    ConfigError,
    InvalidRecordsError,
    StreamcoreError,
)
from streamcore.failures import FailedBatch
from streamcore.sources import MemoryStream
from streamcore.sources.locallog import LocalLog
from streamcore.sources.localqueue import LocalQueue
from streamcore.sources.queue import MemoryQueue

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "App",
    "AppStateError",
    "Batch",
    "BatchFailures",
    "CheckpointStore",
    "Clock",
    "ConfigError",
    "DirectoryCheckpoints",
    "FailedBatch",
    "InvalidRecordsError",
    "LocalLog",
    "LocalQueue",
    "MemoryCheckpoints",
    "MemoryQueue",
    "MemoryStream",
    "StreamcoreError",
    "SystemClock",
    "VirtualClock",
    "Window",
    "window_start",
]
