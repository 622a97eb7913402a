"""Where things live on a host, and what a replica is called: one place for the names every role,
module and check agrees on.

Stdlib only: the hosts' modules import it too (module_utils/fm9g_layout.py is this file).
"""

from __future__ import annotations

import os

#: Everything fm9g-deploy installs on a host lives under here (the env, conda, the model).
INSTALL_ROOT = "/opt/fm9g"
ENVS_DIR = INSTALL_ROOT + "/envs"
CONDA_ROOT = INSTALL_ROOT + "/conda"
#: The deployment's settings on a host: the API key, each replica's spec and environment.
CONFIG_DIR = "/etc/fm9g"
#: The service user's home, and where replica supervisors and the engine probe keep their state.
STATE_DIR = "/var/lib/fm9g"
#: fm9g's own programs on a host (the replica supervisor, the engine probe, the gateway checker).
PROGRAMS_DIR = "/usr/local/lib/fm9g"
SUPERVISOR = PROGRAMS_DIR + "/fm9g_replica_supervisor.py"
ENGINE_PROBE = PROGRAMS_DIR + "/fm9g_engine_probe.py"
#: A headless node of a replica over hosts (`vllm serve --headless`), and the supervisor's module
#: that keeps the nodes in step; both beside the supervisor.
VLLM_WORKER = PROGRAMS_DIR + "/fm9g_vllm_worker.py"
REPLICA_NODES = PROGRAMS_DIR + "/fm9g_replica_nodes.py"
#: The API key file every replica unit reads (root-only; vLLM reads VLLM_API_KEY).
API_KEY_FILE = CONFIG_DIR + "/api-key.env"
#: Container mode: the key file the replica containers mount (readable by the image's user only).
CONTAINER_API_KEY_FILE = CONFIG_DIR + "/container-api-key"
#: Container mode: the random salt (root-only) of the key's HMAC in a replica container's fingerprint.
FINGERPRINT_SALT = CONFIG_DIR + "/fingerprint.salt"

#: Inside a replica container: where the model, the key and the supervisor's state are mounted.
CONTAINER_MODEL_DIR = "/model"
CONTAINER_KEY_FILE = "/run/secrets/fm9g_api_key"
CONTAINER_STATE_DIR = STATE_DIR + "/state"
#: The node exporter's textfile directory: links to every replica's supervisor textfile.
METRICS_TEXTFILE_DIR = STATE_DIR + "/metrics"

SERVE_MODES = ("systemd", "container")


def env_prefix(env_name):
    return ENVS_DIR + "/" + env_name


def env_python(env_name):
    return env_prefix(env_name) + "/bin/python"


def model_root(config):
    return config.model.install_dir.rstrip("/") + "/" + config.model.name


def model_current(config):
    """The stable path replicas serve from: a link switched atomically to the current release."""
    return model_root(config) + "/current"


# -- replicas -------------------------------------------------------------------------------------

def replica_unit(index):
    """Replica ``index``'s systemd unit (an instance of the template unit)."""
    return "fm9g-replica@%d.service" % int(index)


def replica_container(index, prefix=""):
    """Replica ``index``'s container; ``prefix`` names the host where the host is itself a container."""
    return "%sfm9g-replica-%d" % (prefix or "", int(index))


def supervisor_state_dir(serve_mode, index, state_dir=STATE_DIR):
    """Where replica ``index``'s supervisor keeps its state, on the host's filesystem."""
    if serve_mode == "container":
        return os.path.join(state_dir, "containers", "replica-%d" % int(index))
    return state_dir


def supervisor_state_file(serve_mode, index, state_dir=STATE_DIR):
    """The supervisor's state file (restarts, crash history, last cause) on the host's filesystem."""
    name = "replica.state.json" if serve_mode == "container" else "replica-%d.state.json" % int(index)
    return os.path.join(supervisor_state_dir(serve_mode, index, state_dir), name)


def supervisor_textfile(serve_mode, index, state_dir=STATE_DIR):
    """Where replica ``index``'s supervisor writes its state as Prometheus text, on the host."""
    name = "replica.prom" if serve_mode == "container" else "replica-%d.prom" % int(index)
    return os.path.join(supervisor_state_dir(serve_mode, index, state_dir), name)


def engine_probe_cache(serve_mode, state_dir=STATE_DIR):
    """The engine probe's cached answer on the host (container mode: a directory the image's user owns)."""
    return os.path.join(state_dir, "probe" if serve_mode == "container" else "", "engine-probe.json")


def host_layout():
    """The paths above as the playbooks see them: every playbook run gets them as ``fm9g_layout``."""
    return {"install_root": INSTALL_ROOT, "config_dir": CONFIG_DIR, "state_dir": STATE_DIR,
            "programs_dir": PROGRAMS_DIR, "supervisor": SUPERVISOR, "engine_probe": ENGINE_PROBE,
            "api_key_file": API_KEY_FILE, "container_api_key_file": CONTAINER_API_KEY_FILE,
            "fingerprint_salt": FINGERPRINT_SALT, "metrics_textfile_dir": METRICS_TEXTFILE_DIR,
            "container_model_dir": CONTAINER_MODEL_DIR, "container_state_dir": CONTAINER_STATE_DIR,
            "engine_probe_cache": {mode: engine_probe_cache(mode) for mode in SERVE_MODES}}
