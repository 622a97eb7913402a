"""Steady, bounded load on a gateway for rolling-update and fault tests (loopback only)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadReport:
    ok: int = 0
    failures: list[str] = field(default_factory=list)


class SteadyLoad:
    """``workers`` clients each sending one short completion after another until stopped.

    Bounded: it stops by itself after ``max_seconds`` or ``max_requests``, whichever comes first.
    """

    def __init__(self, url: str, api_key: str, *, workers: int = 2, max_seconds: float = 600,
                 max_requests: int = 5000, model: str = "9g"):
        self.url, self.api_key, self.model = url.rstrip("/"), api_key, model
        self.workers, self.max_seconds, self.max_requests = workers, max_seconds, max_requests
        self.report = LoadReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "SteadyLoad":
        self._deadline = time.monotonic() + self.max_seconds
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        body = {"model": self.model, "prompt": "Hello there", "max_tokens": 4}
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                with self._lock:
                    if self.report.ok + len(self.report.failures) >= self.max_requests:
                        return
                try:
                    response = client.post(f"{self.url}/v1/completions", json=body, headers=headers)
                    problem = None if response.status_code == 200 and response.json()["choices"] else \
                        f"HTTP {response.status_code}: {response.text[:120]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if problem:
                        self.report.failures.append(problem)
                    else:
                        self.report.ok += 1
                if problem:  # a service that is down answers at once: count its outage, not a flood
                    self._stop.wait(0.5)
