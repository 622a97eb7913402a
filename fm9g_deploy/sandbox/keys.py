"""The sandbox's SSH key pair, and putting its public half on a host before it boots."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from fm9g_deploy.errors import UserError


def ensure_keypair(private_key: Path) -> tuple[Path, str, bool]:
    """Return (private key path, public key text, made now); an existing pair is kept."""
    public_key = private_key.with_suffix(".pub")
    made = False
    if not (private_key.exists() and public_key.exists()):
        ssh_keygen = shutil.which("ssh-keygen")
        if not ssh_keygen:
            raise UserError("ssh-keygen not found; install openssh-client (apt-get install openssh-client)")
        private_key.unlink(missing_ok=True)
        public_key.unlink(missing_ok=True)
        subprocess.run(
            [ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "fm9g-deploy-sandbox", "-f", str(private_key)],
            check=True, stdin=subprocess.DEVNULL,
        )
        made = True
    private_key.chmod(0o600)
    return private_key, public_key.read_text().strip(), made


def install_authorized_key(container, public_key: str) -> None:
    """Write /root/.ssh/authorized_keys (0600, root) into a created, not yet started container."""
    payload = (public_key + "\n").encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("authorized_keys")
        info.size, info.mode, info.uid, info.gid, info.mtime = len(payload), 0o600, 0, 0, int(time.time())
        archive.addfile(info, io.BytesIO(payload))
    container.put_archive("/root/.ssh", buffer.getvalue())
