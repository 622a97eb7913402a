"""What a GPU site's mirror holds for `provision --check` of a GPU profile here: the published
requirements of the lock's install set (no wheel: check mode only reads the list) and a stand-in
model tarball whose pin is all the role reads."""

from __future__ import annotations

import tarfile
from pathlib import Path

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.publish import requirements_text, set_folder
from tests.fixtures.artifacts.wheels import sha256_of

MODEL = "fm9g-4b"


def check_mode_cache(root: Path, profile: str, lock, model: str = MODEL) -> tuple[Cache, str]:
    """(the cache the mirror serves, the install set of ``model``) under ``root``."""
    cache = Cache(root / "cache")
    set_name = lock.set_for_model(model)
    folder = set_folder(cache, profile, set_name)
    folder.mkdir(parents=True)
    (folder / "requirements.txt").write_text(requirements_text(lock, set_name, lock.python_files(set_name)))
    tarball = root / "FM9G4B.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(__file__, arcname="FM9G4B/README")
    digest = sha256_of(tarball)
    cache.store(tarball, digest, tarball.name)
    cache.save_pin(model, {"filename": tarball.name, "sha256": digest, "size": tarball.stat().st_size})
    return cache, set_name


def provision_check(root: Path, profile: str, lock, cache: Cache, set_name: str, **host_vars):
    """`provision --check --tags env` of one local-connection host against a real mirror server on
    loopback: (the run's result, the commands it would run, the provision variables, the mirror URL)."""
    import contextlib
    import io
    import json
    import sys
    import threading

    from fm9g_deploy.ansible import run_playbook
    from fm9g_deploy.artifacts.serve import make_server
    from fm9g_deploy.config import parse_config
    from fm9g_deploy.hostvars import Stack, provision_vars
    from fm9g_deploy.profiles import load_profile

    server = make_server(cache.root, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = "http://127.0.0.1:%d" % server.server_address[1]
    config = parse_config(f"model:\n  name: {MODEL}\nprofile: {profile}\nmirror:\n  url: {mirror}\n")
    values = provision_vars(Stack(config, load_profile(profile), lock, set_name, cache, mirror))
    inventory = root / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"children": {"serving": {"hosts": {"gpu-host": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, **host_vars}}}}}}))
    output = io.StringIO()
    try:
        with contextlib.redirect_stderr(output):
            result = run_playbook("provision.yml", inventory, extra_vars=values, check=True, tags="env")
    finally:
        server.shutdown()
        server.server_close()
    would_run = [line.split("gpu-host: ", 1)[1] for line in output.getvalue().splitlines() if "would run" in line]
    return result, would_run, values, mirror
