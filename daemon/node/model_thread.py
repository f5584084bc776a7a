"""The model thread: every torch call of a node runs on this one thread.

The event loop hands work over with ``await worker.run(fn, *args)`` and keeps serving HTTP and
MQTT meanwhile. Because only this thread touches the model's tensors, no lock is needed and the
order of weight changes is the order of the calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
T = TypeVar("T")


class ModelThread:
    def __init__(self, *, torch_threads: int = 0) -> None:
        self._torch_threads = torch_threads
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model", initializer=self._init)
        self._busy = threading.Event()

    def _init(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()

        def call() -> T:
            self._busy.set()
            try:
                return fn(*args, **kwargs)
            finally:
                self._busy.clear()

        return await loop.run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
