"""Bring the sandbox up, down, and report on it: hosts, the artifact mirror, their network.

Everything the sandbox creates carries the label fm9g-deploy.sandbox=<name>, so `down` finds all
of it and `up` can tell what already exists (a second `up` changes nothing).

Serving hosts have role "host" (containers <name>-host<N>); the optional fleet gateway host
(`up --gateway`) is built the same way but has role "gateway" (container <name>-gw1).
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.paths import cache_dir, state_dir
from fm9g_deploy.sandbox import keys
from fm9g_deploy.sandbox.image import ensure_host_image
from fm9g_deploy.sandbox.inventory import write_sandbox_files

LABEL = "fm9g-deploy.sandbox"
ROLE_LABEL = "fm9g-deploy.role"
INDEX_LABEL = "fm9g-deploy.index"
#: Set on hosts that can run containers on this machine's engine (`sandbox up --engine-socket`).
ENGINE_LABEL = "fm9g-deploy.engine-socket"
#: The label the serve role puts on replica containers (module_utils/fm9g_container.py).
REPLICA_OWNER_LABEL = "io.fm9g.replica-of"
DEFAULT_NAME = "fm9g-sandbox"
MAX_HOSTS = 16
#: Roles of the host containers: serving hosts, and the optional fleet gateway host.
HOST_ROLE = "host"
GATEWAY_ROLE = "gateway"
#: The sandbox has at most one fleet gateway host, index 1 (inventory name gw1).
GATEWAY_INDEX = 1
#: The port the gateway listens on inside a host (the guide's 8020); published on loopback.
GATEWAY_PORT = 8020
MIRROR_PORT = 8080
SSH_READY_TIMEOUT_S = 90


@dataclass
class SandboxHost:
    name: str
    index: int
    state: str
    ssh_port: int | None
    gateway_port: int | None
    address: str | None
    engine_socket: bool = False
    role: str = HOST_ROLE

    @property
    def inventory_name(self) -> str:
        """Its name in the inventory: host<N> for serving hosts, gw<N> for the gateway host."""
        return f"{'gw' if self.role == GATEWAY_ROLE else 'host'}{self.index}"


@dataclass
class SandboxReport:
    name: str
    inventory: Path
    hosts: list[SandboxHost]
    mirror_url: str
    actions: list[str] = field(default_factory=list)
    #: The fleet gateway host, when the sandbox has one (`up --gateway`).
    gateway: SandboxHost | None = None

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def sandbox_name(name: str | None) -> str:
    name = name or os.environ.get("FM9G_SANDBOX_NAME") or DEFAULT_NAME
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
        raise UserError(f"sandbox name {name!r} is not valid; use 1-31 lowercase letters, digits and '-'")
    return name


def sandbox_dir(name: str) -> Path:
    return state_dir() / "sandboxes" / name


def mirror_container_name(name: str) -> str:
    return f"{name}-mirror"


def host_container_name(name: str, index: int) -> str:
    return f"{name}-host{index}"


def gateway_container_name(name: str, index: int = GATEWAY_INDEX) -> str:
    return f"{name}-gw{index}"


def up(name: str, hosts: int, console, mirror_root: Path | None = None, engine_socket: bool = False,
       gateway: bool | None = None) -> SandboxReport:
    """Make the sandbox have exactly ``hosts`` running hosts and a mirror; idempotent.

    ``engine_socket`` gives each host this machine's Docker engine (its socket and CLI), so
    container serving mode can run replicas beside the host, in the host's network namespace.

    ``gateway``: True makes sure there is a fleet gateway host (gw1), False removes it, None (the
    default) leaves it as it is, so an `up` without --gateway never tears down a gateway host
    that an earlier `up --gateway` made (like --engine-socket, it is only taken away on request).
    """
    from fm9g_deploy.sandbox.engine import docker_client

    if not 1 <= hosts <= MAX_HOSTS:
        raise UserError(f"--hosts {hosts} is out of range; choose 1 to {MAX_HOSTS}")
    client = docker_client()
    actions: list[str] = []
    folder = sandbox_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    private_key, public_key, made_key = keys.ensure_keypair(folder / "id_ed25519")
    if made_key:
        actions.append("generated SSH key")
    image, built = ensure_host_image(client, console)
    if built:
        actions.append(f"built image {image}")
    network = _ensure_network(client, name, actions)
    mirror_root = (mirror_root or cache_dir()).resolve()
    mirror_root.mkdir(parents=True, exist_ok=True)
    _ensure_mirror(client, name, image, network, mirror_root, folder, actions)
    existing = {int(c.labels.get(INDEX_LABEL, 0)): c for c in _containers(client, name, role=HOST_ROLE)}
    for index, container in sorted(existing.items()):
        if index > hosts:
            container.remove(force=True, v=True)
            actions.append(f"removed {container.name}")
    for index in range(1, hosts + 1):
        _ensure_host(client, name, index, image, network, public_key, existing.get(index), actions, engine_socket)
    gateways = {int(c.labels.get(INDEX_LABEL, 0)): c for c in _containers(client, name, role=GATEWAY_ROLE)}
    for index, container in sorted(gateways.items()):
        if gateway is False or index != GATEWAY_INDEX:
            container.remove(force=True, v=True)
            actions.append(f"removed {container.name}")
    if gateway or (gateway is None and GATEWAY_INDEX in gateways):
        _ensure_host(client, name, GATEWAY_INDEX, image, network, public_key, gateways.get(GATEWAY_INDEX), actions,
                     role=GATEWAY_ROLE)
    report = _report(client, name, folder)
    for host in report.hosts + ([report.gateway] if report.gateway else []):
        _wait_for_ssh(host, console)
    if write_sandbox_files(folder, report.hosts, private_key, mirror_url=report.mirror_url,
                           gateway=report.gateway):
        actions.append("wrote inventory")
    report.actions = actions
    return report


def down(name: str, console) -> list[str]:
    """Remove every container, network and volume of the sandbox, and its state directory."""
    import shutil

    from fm9g_deploy.sandbox.engine import docker_client

    client = docker_client()
    removed = []
    for container in _containers(client, name):
        if container.labels.get(ENGINE_LABEL) == "1":
            # Replicas that container serving mode ran beside the host, on this engine.
            for replica in client.containers.list(all=True, filters={"label": f"{REPLICA_OWNER_LABEL}={container.name}"}):
                replica.remove(force=True, v=True)
                removed.append(f"container {replica.name}")
        container.remove(force=True, v=True)
        removed.append(f"container {container.name}")
    for network in client.networks.list(filters={"label": f"{LABEL}={name}"}):
        network.remove()
        removed.append(f"network {network.name}")
    for volume in client.volumes.list(filters={"label": f"{LABEL}={name}"}):
        volume.remove(force=True)
        removed.append(f"volume {volume.name}")
    folder = sandbox_dir(name)
    if folder.exists():
        shutil.rmtree(folder)
        removed.append(f"state {folder}")
    return removed


def status(name: str) -> SandboxReport:
    from fm9g_deploy.sandbox.engine import docker_client

    return _report(docker_client(), name, sandbox_dir(name))


def _containers(client, name: str, role: str | None = None):
    filters = {"label": [f"{LABEL}={name}"] + ([f"{ROLE_LABEL}={role}"] if role else [])}
    return client.containers.list(all=True, filters=filters)


def _labels(name: str, role: str, **extra: str) -> dict[str, str]:
    return {LABEL: name, ROLE_LABEL: role, **extra}


def _ensure_network(client, name: str, actions: list[str]):
    found = client.networks.list(names=[name], filters={"label": f"{LABEL}={name}"})
    if found:
        return found[0]
    actions.append(f"created network {name}")
    return client.networks.create(name, driver="bridge", labels=_labels(name, "network"))


def _systemd_host_options() -> dict:
    """What systemd needs to run as PID 1 without --privileged (FACTS: cgroup v1 here)."""
    return {
        "cap_add": ["SYS_ADMIN"],
        "security_opt": ["seccomp=unconfined"],
        "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        "tmpfs": {"/run": "", "/run/lock": ""},
        # vLLM's CPU engine shares tensors between processes through /dev/shm.
        "shm_size": "2g",
    }


def _engine_options() -> dict:
    """This machine's engine socket and Docker CLI, mounted into a host."""
    import shutil

    socket_path = "/var/run/docker.sock"
    if os.environ.get("DOCKER_HOST", "").startswith("unix://"):
        socket_path = os.environ["DOCKER_HOST"].removeprefix("unix://")
    cli = shutil.which("docker")
    if cli is None:
        raise UserError("--engine-socket needs the docker CLI on this machine; install docker.io")
    return {socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"},
            os.path.realpath(cli): {"bind": "/usr/local/bin/docker", "mode": "ro"}}


def _ensure_host(client, name, index, image, network, public_key, container, actions, engine_socket=False,
                 role=HOST_ROLE) -> None:
    """A serving host (role "host") or the fleet gateway host (role "gateway"): the same image,
    systemd, sshd, nginx and SSH key; both publish SSH and the gateway port on loopback."""
    if container is not None and container.image.tags and image not in container.image.tags:
        container.remove(force=True, v=True)
        actions.append(f"replaced {container.name} (image changed)")
        container = None
    if container is not None and engine_socket and container.labels.get(ENGINE_LABEL) != "1":
        container.remove(force=True, v=True)
        actions.append(f"replaced {container.name} (engine socket added)")
        container = None
    if container is None:
        options = _systemd_host_options()
        extra_labels = {}
        if engine_socket:
            options["volumes"].update(_engine_options())
            extra_labels[ENGINE_LABEL] = "1"
        gateway = role == GATEWAY_ROLE
        container = client.containers.create(
            image,
            name=gateway_container_name(name, index) if gateway else host_container_name(name, index),
            hostname=f"gw{index}" if gateway else f"host{index}",
            detach=True,
            labels=_labels(name, role, **{INDEX_LABEL: str(index)}, **extra_labels),
            ports={"22/tcp": ("127.0.0.1", None), f"{GATEWAY_PORT}/tcp": ("127.0.0.1", None)},
            network=network.name,
            **options,
        )
        keys.install_authorized_key(container, public_key)
        container.start()
        actions.append(f"created {container.name}")
    elif container.status != "running":
        container.start()
        actions.append(f"started {container.name}")


def _mirror_nginx_conf() -> str:
    return (
        "# Managed by fm9g-deploy: the sandbox's artifact mirror.\n"
        "user www-data;\nworker_processes 2;\npid /run/nginx.pid;\nerror_log /dev/stderr warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n"
        "  access_log off;\n  sendfile on;\n"
        f"  server {{\n    listen {MIRROR_PORT};\n    root /srv/mirror;\n    autoindex on;\n"
        "    location = /healthz { return 200 'ok\\n'; }\n  }\n}\n"
    )


def _ensure_mirror(client, name, image, network, mirror_root: Path, folder: Path, actions) -> None:
    conf = folder / "mirror-nginx.conf"
    text = _mirror_nginx_conf()
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    found = _containers(client, name, role="mirror")
    container = found[0] if found else None
    if container is not None:
        mounts = {m["Destination"]: m["Source"] for m in container.attrs.get("Mounts", [])}
        if mounts.get("/srv/mirror") != str(mirror_root) or (container.image.tags and image not in container.image.tags):
            container.remove(force=True, v=True)
            actions.append(f"replaced {container.name} (mirror root or image changed)")
            container = None
    if container is None:
        container = client.containers.create(
            image,
            command=["nginx", "-g", "daemon off;"],
            name=mirror_container_name(name),
            hostname="mirror",
            detach=True,
            labels=_labels(name, "mirror"),
            ports={f"{MIRROR_PORT}/tcp": ("127.0.0.1", None)},
            volumes={
                str(mirror_root): {"bind": "/srv/mirror", "mode": "ro"},
                str(conf): {"bind": "/etc/nginx/nginx.conf", "mode": "ro"},
            },
            network=network.name,
            restart_policy={"Name": "unless-stopped"},
        )
        container.start()
        actions.append(f"created {container.name}")
    elif container.status != "running":
        container.start()
        actions.append(f"started {container.name}")


def _published_port(container, port: int) -> int | None:
    bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp") or []
    return int(bindings[0]["HostPort"]) if bindings else None


def _sandbox_hosts(client, name: str, role: str) -> list[SandboxHost]:
    hosts = []
    for container in sorted(_containers(client, name, role=role), key=lambda c: int(c.labels.get(INDEX_LABEL, 0))):
        container.reload()
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        address = (networks.get(name) or {}).get("IPAddress") or None
        hosts.append(SandboxHost(
            name=container.name,
            index=int(container.labels.get(INDEX_LABEL, 0)),
            state=container.status,
            ssh_port=_published_port(container, 22),
            gateway_port=_published_port(container, GATEWAY_PORT),
            address=address,
            engine_socket=container.labels.get(ENGINE_LABEL) == "1",
            role=role,
        ))
    return hosts


def _report(client, name: str, folder: Path) -> SandboxReport:
    gateways = _sandbox_hosts(client, name, GATEWAY_ROLE)
    return SandboxReport(
        name=name,
        inventory=folder / "hosts.yml",
        hosts=_sandbox_hosts(client, name, HOST_ROLE),
        mirror_url=f"http://{mirror_container_name(name)}:{MIRROR_PORT}",
        gateway=gateways[0] if gateways else None,
    )


def _wait_for_ssh(host: SandboxHost, console) -> None:
    """Wait until the host's sshd sends its banner on the loopback port."""
    if host.ssh_port is None:
        raise OperationFailed(f"{host.name} has no published SSH port; run `fm9g-deploy sandbox down` and up again")
    deadline = time.monotonic() + SSH_READY_TIMEOUT_S
    with console.status(f"waiting for sshd on {host.name}"):
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", host.ssh_port), timeout=2) as sock:
                    sock.settimeout(2)
                    if sock.recv(16).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.5)
    raise OperationFailed(
        f"{host.name}: sshd did not answer on 127.0.0.1:{host.ssh_port} within {SSH_READY_TIMEOUT_S}s; "
        f"see `docker logs {host.name}`"
    )
