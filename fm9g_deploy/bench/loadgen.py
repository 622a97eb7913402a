"""A bounded load generator for an OpenAI-compatible /v1/completions endpoint (asyncio + aiohttp).

Every request streams, asks for exactly ``output_len`` tokens (``max_tokens`` with vLLM's
``ignore_eos``) and for a usage chunk, so output lengths are fixed and counted by the server.
Requests go out at a fixed concurrency, or at a request rate with Poisson arrivals (seeded),
as `vllm bench serve` sends them. The run is bounded: a fixed number of prompts, a per-request
timeout and an overall deadline after which unfinished requests are cancelled and counted as
errors. Traffic goes only to the given URL.

aiohttp, as vLLM's benchmark uses: per streamed chunk it costs about a third of the CPU that
httpx does, which matters when the client shares the CPUs with a server it measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp

from fm9g_deploy.bench.endpoint import key_rejected_message, model_missing_message
from fm9g_deploy.bench.metrics import RequestResult
from fm9g_deploy.errors import OperationFailed, UserError


@dataclass(frozen=True)
class LoadSettings:
    base_url: str
    api_key: str | None
    model: str
    output_len: int
    concurrency: int | None = None  # at most this many requests in flight
    request_rate: float | None = None  # requests per second (Poisson arrivals); None: all at once
    warmup: int = 0
    seed: int = 0
    request_timeout_s: float = 300.0
    max_duration_s: float = 600.0

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/v1/completions"


@dataclass
class LoadRun:
    prompts: list[str]
    results: list[RequestResult]
    duration_s: float
    #: perf_counter time the measured run started (request start times are on the same clock).
    started_at: float
    #: True when the overall deadline cut the run short.
    cut_short: bool = False


def _headers(settings: LoadSettings) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return headers


def _payload(settings: LoadSettings, prompt: str) -> dict:
    # The same body `vllm bench serve` sends for the openai-completions backend with --ignore-eos.
    return {
        "model": settings.model,
        "prompt": prompt,
        "repetition_penalty": 1.0,
        "max_tokens": settings.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


async def send_completion(session: aiohttp.ClientSession, settings: LoadSettings, prompt: str) -> RequestResult:
    """One streamed completion, timed the way vLLM's benchmark times it."""
    result = RequestResult()
    start = time.perf_counter()
    result.start_time = start
    last = start
    got_choice = False
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            async with session.post(settings.completions_url, json=_payload(settings, prompt),
                                    headers=_headers(settings)) as response:
                if response.status != 200:
                    body = (await response.read()).decode("utf-8", "replace")
                    result.error_kind = f"HTTP {response.status}"
                    result.error = _server_message(body) or (response.reason or "")
                    return result
                pending = b""
                finished = False
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        line = line.strip()
                        if not line or line.startswith(b":"):
                            continue  # event separators and SSE keep-alive comments
                        data = line.removeprefix(b"data:").strip()
                        if data == b"[DONE]":
                            finished = True
                            break
                        message = json.loads(data)
                        if message.get("error"):
                            result.error_kind = "stream error"
                            result.error = _server_message(data.decode("utf-8", "replace"))
                            return result
                        if message.get("choices"):
                            now = time.perf_counter()
                            if not got_choice:
                                got_choice = True
                                result.ttft = now - start
                            else:
                                result.itl.append(now - last)
                            last = now
                        elif message.get("usage"):
                            usage = message["usage"]
                            result.output_tokens = int(usage.get("completion_tokens") or 0)
                            result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    if finished:
                        break
    except TimeoutError:
        result.error_kind, result.error = "timeout", f"no answer within {settings.request_timeout_s:g} s"
        return result
    except aiohttp.ClientConnectorError as exc:
        errno = getattr(exc.os_error, "errno", None)
        reason = os.strerror(errno) if errno else _describe(exc)
        result.error_kind, result.error = "connection", reason
        return result
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        result.error_kind, result.error = "connection", _describe(exc)
        return result
    except (json.JSONDecodeError, UnicodeDecodeError, aiohttp.ClientError) as exc:
        result.error_kind, result.error = type(exc).__name__, _describe(exc)
        return result
    result.latency = last - start
    if not got_choice:
        result.error_kind, result.error = "no tokens", "the stream ended before any token"
        return result
    if not result.output_tokens:
        # No usage chunk (not a vLLM server): count the streamed chunks instead.
        result.output_tokens = len(result.itl) + 1
    result.success = True
    return result


def _server_message(body: str) -> str:
    """The "message" of an OpenAI-style error body, else the body's first line."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0][:300] if body.strip() else ""
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:300]
    return str(error)[:300]


def _describe(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def check_probe(probe: RequestResult, settings: LoadSettings) -> None:
    """Turn a failed first request into the operator's one-line error (like vLLM's test run)."""
    if probe.success:
        return
    url = settings.base_url
    if probe.error_kind == "connection":
        raise UserError(f"cannot reach {url} ({probe.error}); check --url and that the service is up")
    if probe.error_kind == "HTTP 401":
        raise UserError(key_rejected_message(url, settings.api_key))
    if probe.error_kind == "HTTP 404":
        raise UserError(model_missing_message(url, settings.model, detail=probe.error))
    if probe.error_kind in ("HTTP 400", "HTTP 422"):
        raise UserError(f"{url} refused the request ({probe.error_kind}: {probe.error}); "
                        "check --input-len and --output-len against the model's max length")
    raise OperationFailed(f"the first request to {url} failed ({probe.error_kind}: {probe.error})")


def arrival_offsets(count: int, request_rate: float | None, seed: int) -> list[float]:
    """Send times (s after the start): Poisson arrivals rescaled to span count / rate, as vLLM does;
    all zero without a rate."""
    if not request_rate or request_rate == float("inf"):
        return [0.0] * count
    rng = random.Random(seed)
    offsets, total = [], 0.0
    for _ in range(count):
        total += rng.expovariate(request_rate)
        offsets.append(total)
    scale = (count / request_rate) / offsets[-1] if offsets and offsets[-1] > 0 else 1.0
    return [offset * scale for offset in offsets]


def _session(settings: LoadSettings, count: int) -> aiohttp.ClientSession:
    connections = settings.concurrency or max(count, 1)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        # Each request has its own deadline (asyncio.timeout above); only connecting is bounded here.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        trust_env=False,  # never route the benchmark through a proxy from the environment
    )


async def run_load(settings: LoadSettings, prompts: list[str],
                   resize: Callable[[int], list[str]] | None = None,
                   on_ready: Callable[[list[str]], None] | None = None) -> LoadRun:
    """Probe, warm up, then send every prompt; ``resize(prompt_tokens)`` may replace the prompts
    once the probe has shown how many tokens the first prompt is; ``on_ready(prompts)`` is told
    once the probe has passed (so a bad endpoint leaves only the one-line error)."""
    async with _session(settings, len(prompts)) as session:
        probe = await send_completion(session, settings, prompts[0])
        check_probe(probe, settings)
        if resize is not None and probe.prompt_tokens:
            prompts = resize(probe.prompt_tokens)
        if on_ready is not None:
            on_ready(prompts)
        gate = asyncio.Semaphore(settings.concurrency) if settings.concurrency else None

        async def limited(prompt: str) -> RequestResult:
            if gate is None:
                return await send_completion(session, settings, prompt)
            async with gate:
                return await send_completion(session, settings, prompt)

        if settings.warmup:
            await asyncio.gather(*(limited(prompts[0]) for _ in range(settings.warmup)))

        offsets = arrival_offsets(len(prompts), settings.request_rate, settings.seed)
        tasks: list[asyncio.Task] = []

        async def dispatch() -> None:
            begin = time.perf_counter()
            for prompt, offset in zip(prompts, offsets):
                delay = begin + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(limited(prompt)))
            await asyncio.gather(*tasks)

        started = time.perf_counter()
        cut_short = False
        try:
            await asyncio.wait_for(dispatch(), timeout=settings.max_duration_s)
        except TimeoutError:
            cut_short = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        duration = time.perf_counter() - started
        results = [_outcome(task) for task in tasks]
        stopped = RequestResult(error_kind="stopped", error=f"--max-duration {settings.max_duration_s:g} s reached")
        results += [stopped] * (len(prompts) - len(results))
        return LoadRun(prompts=prompts, results=results, duration_s=duration, started_at=started,
                       cut_short=cut_short)


def _outcome(task: asyncio.Task) -> RequestResult:
    if task.cancelled() or not task.done():
        return RequestResult(error_kind="stopped", error="cancelled at the deadline")
    exc = task.exception()
    if exc is not None:
        return RequestResult(error_kind=type(exc).__name__, error=str(exc))
    return task.result()
