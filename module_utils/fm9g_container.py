"""Shared by the container serving mode: the `docker run` argv of a replica and its fingerprint.

Runs on the host (stdlib only). A replica container runs the serving image's entry point with
the same FM9G_* settings a systemd replica gets; it joins the host's network (or, where the host
is itself a container of the same engine, that container's) and listens on loopback only.
"""

import hashlib
import json

REPLICA_LABEL = "io.fm9g.replica"
OWNER_LABEL = "io.fm9g.replica-of"
FINGERPRINT_LABEL = "io.fm9g.fingerprint"
MODEL_TARGET = "/model"
KEY_TARGET = "/run/secrets/fm9g_api_key"
#: The replica supervisor's state (restarts, crash history, last cause) lives on the host, so it
#: survives the container and `status` reads it there.
STATE_TARGET = "/var/lib/fm9g/state"


def container_name(prefix, index):
    return "%sfm9g-replica-%d" % (prefix or "", int(index))


def gpus_value(gpus):
    """--gpus takes a CSV field: a list of devices must be quoted, or its commas split it."""
    return '"device=%s"' % ",".join(str(int(gpu)) for gpu in gpus)


def _mount(source, target, readonly=True):
    if "," in source or "," in target:
        raise ValueError("a bind-mount path may not contain a comma: %s" % source)
    return "type=bind,source=%s,target=%s%s" % (source, target, ",readonly" if readonly else "")


def run_argv(docker, name, image, index, owner, settings, gpus, network, model_source, key_source,
             restart="on-failure", stop_timeout=60, state_source=None):
    """The `docker run` argv (without the fingerprint label and image) of one replica.

    ``settings`` are the FM9G_* variables (and VLLM_CPU_KVCACHE_SPACE on CPU hosts), passed with
    --env so `docker inspect` shows them; the API key is never among them: it is a mounted file.
    """
    # --init: the supervisor is not PID 1, so the engine's orphaned workers are reaped.
    argv = [docker, "run", "--detach", "--init", "--name", name,
            "--restart", restart, "--ipc", "host", "--network", network,
            "--stop-timeout", str(int(stop_timeout)),
            "--label", "%s=%d" % (REPLICA_LABEL, int(index)), "--label", "%s=%s" % (OWNER_LABEL, owner)]
    if gpus:
        argv += ["--gpus", gpus_value(gpus)]
    for key in sorted(settings):
        if "KEY" in key.upper() and key != "FM9G_API_KEY_FILE":
            raise ValueError("the API key is mounted as a file, never passed as %s" % key)
        argv += ["--env", "%s=%s" % (key, settings[key])]
    argv += ["--mount", _mount(model_source, MODEL_TARGET), "--mount", _mount(key_source, KEY_TARGET)]
    if state_source:
        argv += ["--mount", _mount(state_source, STATE_TARGET, readonly=False)]
    return argv


def fingerprint(argv, image_id, extra):
    """What the replica runs with: its argv, the image's id (a rebuilt tag counts) and ``extra``."""
    return hashlib.sha256(json.dumps([argv, image_id, extra]).encode("utf-8")).hexdigest()[:32]


def full_argv(argv, fingerprint_value, image):
    return argv + ["--label", "%s=%s" % (FINGERPRINT_LABEL, fingerprint_value), image]
