"""Access to the Docker engine, with a clear message when it is not there."""

from __future__ import annotations

from fm9g_deploy.errors import UserError

ENGINE_HELP = (
    "start it (`dockerd &` as root, or `systemctl start docker`), or run `make deps`, "
    "which installs docker.io and starts the engine"
)


def docker_client():
    """A docker SDK client whose engine has answered a ping."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except DockerException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"the Docker engine is not reachable ({reason[:160]}); {ENGINE_HELP}") from None
    return client
