"""Shared by the container serving mode: the `docker run` argv of a replica and its fingerprint.

Runs on the host (stdlib only). A replica container runs the replica spec's command line
(fm9g_deploy/replica_spec.py) through the serving image's entry point, which reads the mounted
key file; it joins the host's network (or, where the host is itself a container of the same
engine, that container's) and listens on loopback only.
"""

import hashlib
import hmac
import json
import os

REPLICA_LABEL = "io.fm9g.replica"
OWNER_LABEL = "io.fm9g.replica-of"
FINGERPRINT_LABEL = "io.fm9g.fingerprint"


def gpus_value(gpus):
    """--gpus takes a CSV field: a list of devices must be quoted, or its commas split it."""
    return '"device=%s"' % ",".join(str(int(gpu)) for gpu in gpus)


def _mount(source, target, readonly=True):
    if "," in source or "," in target:
        raise ValueError("a bind-mount path may not contain a comma: %s" % source)
    return "type=bind,source=%s,target=%s%s" % (source, target, ",readonly" if readonly else "")


def run_argv(docker, name, index, owner, environment, gpus, network, mounts, restart="on-failure", stop_timeout=60):
    """The `docker run` options (without the fingerprint label, the image and its command) of one replica.

    ``environment`` is the spec's, passed with --env so `docker inspect` shows it; the API key is
    never in it: it is a mounted file. ``mounts``: (source on the engine's filesystem, target, read-only).
    """
    # --init: the supervisor is not PID 1, so the engine's orphaned workers are reaped.
    argv = [docker, "run", "--detach", "--init", "--name", name,
            "--restart", restart, "--ipc", "host", "--network", network,
            "--stop-timeout", str(int(stop_timeout)),
            "--label", "%s=%d" % (REPLICA_LABEL, int(index)), "--label", "%s=%s" % (OWNER_LABEL, owner)]
    if gpus:
        argv += ["--gpus", gpus_value(gpus)]
    for key in sorted(environment):
        if "KEY" in key.upper() and key != "FM9G_API_KEY_FILE":
            raise ValueError("the API key is mounted as a file, never passed as %s" % key)
        argv += ["--env", "%s=%s" % (key, environment[key])]
    for source, target, readonly in mounts:
        argv += ["--mount", _mount(source, target, readonly)]
    return argv


def key_digest(key_file, salt_file, create=True):
    """What the replica's key is, as part of its fingerprint, useless for testing guesses of the key.

    A container's labels are readable by anyone who may use the engine, so the fingerprint holds
    no plain hash of the key: an HMAC keyed by a random salt kept root-only on the host (made on
    first use) stands for it. "" when the key file is missing (or the salt, in check mode).
    """
    try:
        with open(key_file, "rb") as handle:
            key = handle.read()
    except OSError:
        return ""
    try:
        with open(salt_file, "rb") as handle:
            salt = handle.read()
    except FileNotFoundError:
        if not create:
            return ""
        salt = os.urandom(32).hex().encode("ascii")
        descriptor = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(salt)
    return hmac.new(salt, key, hashlib.sha256).hexdigest()[:32]


def fingerprint(argv, command, image_id, extra):
    """What the replica runs with: its options, its command, the image's id (a rebuilt tag counts), ``extra``."""
    return hashlib.sha256(json.dumps([argv, command, image_id, extra]).encode("utf-8")).hexdigest()[:32]


def full_argv(argv, fingerprint_value, image, command):
    """The whole `docker run`: the image's entry point gets ``--`` and the spec's command line."""
    return argv + ["--label", "%s=%s" % (FINGERPRINT_LABEL, fingerprint_value), image, "--"] + list(command)
