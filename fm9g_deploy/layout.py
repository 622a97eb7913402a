"""Where things live on a host: one place for the paths every role and check agrees on."""

from __future__ import annotations

from fm9g_deploy.config import DeploymentConfig

#: Everything fm9g-deploy installs on a host lives under here (the env, conda, the model).
INSTALL_ROOT = "/opt/fm9g"
ENVS_DIR = f"{INSTALL_ROOT}/envs"
CONDA_ROOT = f"{INSTALL_ROOT}/conda"
CONFIG_DIR = "/etc/fm9g"


def env_prefix(env_name: str) -> str:
    return f"{ENVS_DIR}/{env_name}"


def env_python(env_name: str) -> str:
    return f"{env_prefix(env_name)}/bin/python"


def model_root(config: DeploymentConfig) -> str:
    return f"{config.model.install_dir.rstrip('/')}/{config.model.name}"


def model_current(config: DeploymentConfig) -> str:
    """The stable path replicas serve from: a link switched atomically to the current release."""
    return f"{model_root(config)}/current"
