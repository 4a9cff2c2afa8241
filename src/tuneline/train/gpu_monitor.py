"""GPU utilization and memory, sampled in a background thread while training runs (NVML).

The health monitor turns a low mean utilization into a data-bottleneck warning; the peak memory goes
to reports/train_health.json. Without a CUDA device or nvidia-ml-py it samples nothing and says why.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)


class GpuSampler:
    """Samples GPU utilization and memory every `interval_s` seconds in a daemon thread, via NVML.

    A no-op, with the reason in `summary()`, where no CUDA device is visible or nvidia-ml-py is not
    installed. `read` replaces the NVML reader: a callable returning (utilization %, used GiB, total GiB).
    """

    def __init__(self, interval_s: float = 5.0, read: Callable[[], tuple[float, float, float]] | None = None):
        self.interval_s, self._read = interval_s, read
        self.reason: str | None = None  # why nothing is sampled
        self.device: str | None = None
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._thread: threading.Thread | None = None
        self._util: list[float] = []
        self._mem_max, self._mem_total = 0.0, 0.0

    def _nvml_reader(self) -> Callable[[], tuple[float, float, float]] | None:
        try:
            if not torch.cuda.is_available():
                self.reason = "no CUDA device visible"
                return None
            index = torch.cuda.current_device()
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        except ImportError:
            index, uuid = int(os.environ.get("LOCAL_RANK", "0")), None
        try:
            import pynvml  # lazy: nvidia-ml-py: optional, not a dependency
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
            return None
        try:
            pynvml.nvmlInit()
            # NVML numbers GPUs physically, CUDA_VISIBLE_DEVICES renumbers them: the UUID names this one.
            if uuid is not None:
                handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
        except pynvml.NVMLError as exc:
            self.reason = f"NVML unavailable: {exc}"
            return None
        self.device = name.decode() if isinstance(name, bytes) else str(name)

        def read() -> tuple[float, float, float]:
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            return float(util), mem.used / 2**30, mem.total / 2**30

        return read

    def start(self) -> bool:
        """Start sampling in the background; False (and `reason`) when there is nothing to sample."""
        if self._thread is not None:
            return True
        self._read = self._read or self._nvml_reader()
        if self._read is None:
            logger.info("GPU sampling off: %s", self.reason)
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
        self._thread.start()
        return True

    def _loop(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # a driver hiccup must not kill training: stop sampling instead
                self.reason = f"sampling stopped: {exc}"
                return
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        """Take one sample now."""
        if self._read is not None:
            util, used, total = self._read()
            with self._lock:
                self._util.append(util)
                self._mem_max, self._mem_total = max(self._mem_max, used), total

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=max(1.0, self.interval_s))
            self._thread = None

    @property
    def mean_utilization(self) -> float | None:
        """Mean GPU utilization (%) over the samples; None without samples."""
        with self._lock:
            return statistics.fmean(self._util) if self._util else None

    def summary(self) -> dict[str, Any]:
        """{"available", "reason", "device", "interval_s", "samples", "utilization_mean" / "_min" /
        "_max" (%), "memory_used_max_gib", "memory_total_gib"}."""
        with self._lock:
            u = list(self._util)
        return {
            "available": bool(u),
            "reason": None if u else self.reason or "no sample taken",
            "device": self.device,
            "interval_s": self.interval_s,
            "samples": len(u),
            "utilization_mean": statistics.fmean(u) if u else None,
            "utilization_min": min(u) if u else None,
            "utilization_max": max(u) if u else None,
            "memory_used_max_gib": self._mem_max if u else None,
            "memory_total_gib": self._mem_total if u else None,
        }
