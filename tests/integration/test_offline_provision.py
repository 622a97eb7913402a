"""Provision with no route out but the mirror: the promise that hosts install offline.

A fresh sandbox host is put on a Docker network of its own made `internal` (no gateway, no route
to anything but its members), whose only other member is the sandbox's artifact mirror. Ansible
reaches it over SSH without any network: ssh's ProxyCommand runs the host's own sshd in inetd mode
through `docker exec`. The test first proves the isolation (the host cannot open a connection to
anything past the mirror), then provisions the cpu profile from the mirror alone: anything the
provision fetched from elsewhere (PyPI, a Debian mirror, conda-forge) would fail it.
"""

from __future__ import annotations

import shlex
import time

import pytest
import yaml

from fm9g_deploy import layout
from fm9g_deploy.config import load_config
from fm9g_deploy.profiles import load_profile
from fm9g_deploy.sandbox import hosts as sandbox
from fm9g_deploy.sandbox.engine import docker_client
from tests.conftest import run_cli

#: Addresses past the mirror the host must not reach: a registry by name, and public addresses by
#: number (no DNS needed), on the ports a provision would use.
OUTSIDE = (("pypi.org", 443), ("1.1.1.1", 443), ("8.8.8.8", 53), ("151.101.0.223", 80))
REACH = """\
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=5).close()
except OSError as exc:
    print(type(exc).__name__, exc)
    sys.exit(1)
print("reached")
"""


def _exec(container, *argv: str) -> tuple[int, str]:
    code, output = container.exec_run(list(argv))
    return code, output.decode(errors="replace")


@pytest.fixture(scope="module")
def offline_host(sandbox_name, sandbox_inventory, fetched_artifacts, tmp_path_factory):
    """(inventory, host container) of a fresh host whose only network peer is the mirror."""
    client = docker_client()
    mirror = client.containers.get(sandbox.mirror_container_name(sandbox_name))
    network = client.networks.create(f"{sandbox_name}-offline", driver="bridge", internal=True,
                                     labels=sandbox._labels(sandbox_name, "offline-network"))
    container = None
    try:
        network.connect(mirror, aliases=["mirror"])
        image = mirror.image.tags[0]
        container = client.containers.create(
            image, name=f"{sandbox_name}-offline1", hostname="offline1", detach=True,
            labels=sandbox._labels(sandbox_name, "offline-host"), network=network.name,
            **sandbox._systemd_host_options())
        folder = sandbox.sandbox_dir(sandbox_name)
        private_key = folder / "id_ed25519"
        sandbox.keys.install_authorized_key(container, (folder / "id_ed25519.pub").read_text().strip())
        container.start()
        deadline = time.monotonic() + 90
        while _exec(container, "test", "-s", "/etc/ssh/ssh_host_ed25519_key")[0] != 0:
            assert time.monotonic() < deadline, "the offline host made no SSH host key"
            time.sleep(1)
        work = tmp_path_factory.mktemp("offline")
        proxy = f"docker exec -i {container.name} /usr/sbin/sshd -i"
        inventory = work / "hosts.yml"
        inventory.write_text(yaml.safe_dump({"all": {
            "vars": {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
                     "ansible_ssh_private_key_file": str(private_key)},
            "children": {"serving": {"hosts": {"offline1": {
                "ansible_host": "offline1",
                "ansible_ssh_common_args": f"-o ProxyCommand={shlex.quote(proxy)} "
                                           "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            }}}}}}, sort_keys=False))
        (work / "fm9g.yml").write_text(
            "model:\n  name: tiny-random\nprofile: cpu\n"
            f"mirror:\n  url: http://mirror:{sandbox.MIRROR_PORT}\n")
        yield inventory, container
    finally:
        if container is not None:
            container.remove(force=True, v=True)
        network.reload()
        if any(c.id == mirror.id for c in network.containers):
            network.disconnect(mirror, force=True)
        network.remove()


def test_the_offline_host_reaches_the_mirror_and_nothing_past_it(offline_host):
    _, container = offline_host
    code, output = _exec(container, "python3", "-c", REACH, "mirror", str(sandbox.MIRROR_PORT))
    assert code == 0, f"the offline host cannot reach the mirror: {output}"
    for host, port in OUTSIDE:
        code, output = _exec(container, "python3", "-c", REACH, host, str(port))
        assert code != 0 and "reached" not in output, f"the offline host reached {host}:{port}"


def test_provision_from_the_mirror_alone(offline_host):
    inventory, container = offline_host
    result = run_cli("provision", "-i", str(inventory), timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    python = layout.env_python(load_profile("cpu").env.name)
    code, output = _exec(container, python, "-c", "import vllm, torch; print(vllm.__version__)")
    assert code == 0, output
    config = load_config(inventory.parent / "fm9g.yml")
    code, output = _exec(container, "test", "-s", layout.model_current(config) + "/config.json")
    assert code == 0, "the model is not installed on the offline host"
