"""After a rollout the API key, and what is derived from it, is nowhere but in the root-only files
that must hold it: not in another file on the hosts, their journals, a process's command line,
Ansible's output (verbose too), the control node's state, or an image's layers.

The sandbox's usual key is the guide's sample `fm9g`, which is in every path; this module rolls a
distinctive random key out first. It runs after every other module (tests/integration/conftest.py
orders it last), so no other test sees the new key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

KEY = "k" + secrets.token_hex(20)
#: The key, as written to files (with a newline), and what Ansible or a careless script derives from it.
FORMS = {
    "the key": KEY,
    "its sha1 (Ansible's checksum)": hashlib.sha1(f"{KEY}\n".encode()).hexdigest(),
    "the key file's sha1": hashlib.sha1(f"VLLM_API_KEY={KEY}\n".encode()).hexdigest(),
    "its sha256": hashlib.sha256(KEY.encode()).hexdigest(),
    "its sha256 with a newline": hashlib.sha256(f"{KEY}\n".encode()).hexdigest(),
    "its base64": base64.b64encode(KEY.encode()).decode()[:-4],
    "the key file's base64 (slurp)": base64.b64encode(f"VLLM_API_KEY={KEY}\n".encode()).decode()[4:40],
}
#: The files that must hold it, and how: root-only, or the serving image's user only (container mode).
ALLOWED = {"/etc/fm9g/api-key.env": ("root", 0o600), "/etc/fm9g/container-api-key": (None, 0o400)}
#: Where a host keeps what a rollout writes (the envs' site-packages are not written by deploy).
HOST_PLACES = ["/etc", "/var", "/tmp", "/root", "/home", "/run", "/usr/local/lib/fm9g", "/opt/fm9g/models"]


def _grep_args() -> list[str]:
    return [arg for text in FORMS.values() for arg in ("-e", text)]


@pytest.fixture(scope="module")
def rolled_out(deployed_sandbox, test_config, tmp_path_factory):
    """The sandbox redeployed with KEY, and everything the CLI printed while doing it (verbose)."""
    inventory, _ = deployed_sandbox
    folder = tmp_path_factory.mktemp("secret-key")
    config = folder / "fm9g.yml"
    descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(test_config.read_text().replace("api_key: fm9g", f"api_key: {KEY}"))
    result = run_cli("deploy", "-i", str(inventory), "--config", str(config), "-vv", timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return inventory, config, result.stdout + result.stderr


def _found(text: str) -> list[str]:
    return [name for name, form in FORMS.items() if form in text]


def test_ansible_output_shows_no_form_of_the_key(rolled_out):
    _, _, output = rolled_out
    assert "changed" in output  # the new key rolled every replica: there was output to scan
    assert not _found(output), f"deploy -vv printed {', '.join(_found(output))}"


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_on_the_hosts_the_key_is_only_in_the_files_that_must_hold_it(rolled_out, name):
    """Read through `docker exec` on the sandbox host's container: a command over SSH or sudo, with
    the key among its arguments, would put it into the very journal this reads."""
    import docker
    import yaml

    inventory, _, _ = rolled_out
    hosts = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"]
    host = docker.from_env().containers.get(hosts[name]["fm9g_sandbox_container"])

    def run(*argv: str) -> str:
        return host.exec_run(list(argv), user="root").output.decode("utf-8", "replace")

    journal = run("journalctl", "--no-pager", "-o", "cat")
    commands = run("sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done")
    listing = run("grep", "-rlaF", "--exclude-dir=proc", "--exclude-dir=sys", *_grep_args(), *HOST_PLACES)
    holders = sorted(set(line for line in listing.split() if line.startswith("/")))
    assert "/etc/fm9g/api-key.env" in holders, f"the scan found not even the key file: {listing[-300:]}"
    assert set(holders) <= set(ALLOWED), f"{name}: the key or a hash of it is in {sorted(set(holders) - set(ALLOWED))}"
    for path in holders:
        owner, mode = ALLOWED[path]
        found_owner, found_mode = run("stat", "-c", "%U %a", path).split()
        assert int(found_mode, 8) == mode and owner in (None, found_owner), f"{path} is {found_owner} {found_mode}"
    assert "Journal started" in journal or journal.strip(), "the journal could not be read"
    assert not _found(journal), f"{name}'s journal holds {', '.join(_found(journal))}"
    assert not _found(commands), f"a command line on {name} holds {', '.join(_found(commands))}"


def test_the_control_node_keeps_it_only_in_the_config_the_operator_wrote(rolled_out):
    inventory, config, _ = rolled_out
    # The sandbox's folder, the CLI's own temporary folders (the Ansible runs', verify's, status's:
    # all should be gone), and Ansible's.
    places = [inventory.parent, *Path(tempfile.gettempdir()).glob("fm9g-*"), Path.home() / ".ansible"]
    command = ["grep", "-rlaF", *_grep_args(), *[str(place) for place in places if place.exists()]]
    found = subprocess.run(command, capture_output=True, text=True, check=False).stdout.split()
    # pytest's own temp dirs hold this module's config (and test outputs of others): not the CLI's doing.
    found = [path for path in found if "pytest-of-" not in path and Path(path) != config]
    assert not found, f"the key or a hash of it is in {found[:5]} on the control node"


def test_no_image_layer_or_container_holds_it(rolled_out):
    images = subprocess.run(["docker", "images", "--quiet", "--no-trunc"], capture_output=True, text=True,
                            check=True).stdout.split()
    containers = subprocess.run(["docker", "ps", "--all", "--quiet", "--no-trunc"], capture_output=True,
                                text=True, check=True).stdout.split()
    for image in images:
        text = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True).stdout
        text += subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True).stdout
        assert not _found(text), f"image {image[:19]} holds {', '.join(_found(text))}"
    for container in containers:
        text = subprocess.run(["docker", "container", "inspect", container], capture_output=True, text=True).stdout
        assert not _found(text), f"container {container[:12]}'s settings hold {', '.join(_found(text))}"
