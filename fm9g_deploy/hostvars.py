"""What each playbook is told: the fm9g_* variables built from the config, the lock and the cache.

The control node knows exactly which files a host must get (the lock, the cache's pins), so it
hands the roles URLs on the mirror and the sha256 of every file; the hosts never choose.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm9g_deploy import layout
from fm9g_deploy.config import DeploymentConfig
from fm9g_deploy.errors import UserError

GIB = 1024**3
#: An installed env takes about this many times the bytes of its wheels.
ENV_UNPACK_FACTOR = 3.0


@dataclass(frozen=True)
class Stack:
    """The resolved stack of one deployment: profile, lock, install set, cache, mirror."""

    config: DeploymentConfig
    profile: Any
    lock: Any
    set_name: str
    cache: Any
    mirror_url: str

    @property
    def published_path(self) -> str:
        """The install set's pip view, relative to the cache root (and so to the mirror URL)."""
        from fm9g_deploy.artifacts.publish import set_folder

        return set_folder(self.cache, self.profile.name, self.set_name).relative_to(self.cache.root).as_posix()

    def requirements_file(self) -> Path:
        return self.cache.root / self.published_path / "requirements.txt"

    def requirements_sha256(self) -> str:
        return hashlib.sha256(self.requirements_file().read_bytes()).hexdigest()

    def model_pin(self) -> dict:
        return self.cache.pins()[self.config.model.name]

    def image_tag(self) -> str:
        """The serving image `fm9g-deploy image build` makes of this stack (container mode)."""
        from fm9g_deploy.image.render import image_tag, lock_sha256

        return image_tag(self.profile.name, self.set_name, lock_sha256(self.profile.name))

    def serve_as(self) -> str:
        """What the profile's vLLM serves the model as: ``native``, or the upstream architecture."""
        return model_serve_as(self.config.model.name, self.profile)

    def revision(self) -> str:
        """What replicas serve: the env's lock, the model release and its mapping. A change rolls them."""
        return (f"env:{self.requirements_sha256()[:16]} model:{self.model_pin()['sha256'][:16]} "
                f"as:{self.serve_as()}")


def model_serve_as(model: str, profile) -> str:
    """``native`` where the profile's vLLM knows the architecture, else what upstream vLLM serves
    it as (fm9g_deploy/architecture.py); UserError when the catalog knows no mapping for it."""
    from fm9g_deploy.architecture import NATIVE
    from fm9g_deploy.catalog import get_model

    if profile.architecture_mapping == "native":
        return NATIVE
    spec = get_model(model)
    if not spec.upstream_architecture:
        raise UserError(f"profile {profile.name} runs upstream vLLM, which cannot serve {model} "
                        f"({spec.architecture}: no mapping in the catalog); choose a profile whose vLLM "
                        "knows it natively")
    return spec.upstream_architecture


def load_stack(config: DeploymentConfig, config_path: Path | None = None) -> Stack:
    """Resolve the profile, lock and cache; UserError naming the command to run when a piece is missing."""
    from fm9g_deploy.artifacts.cache import Cache, resolve_cache_dir
    from fm9g_deploy.artifacts.lock import load_lock
    from fm9g_deploy.profiles import load_profile

    profile = load_profile(config.profile)
    lock = load_lock(config.profile)
    set_name = lock.set_for_model(config.model.name)
    cache = Cache(resolve_cache_dir(config.mirror.cache_dir, None))
    if not config.mirror.url:
        raise UserError("mirror.url is not set in the config; set it to the URL the hosts fetch artifacts "
                        "from (serve the cache with `fm9g-deploy artifacts serve`)")
    stack = Stack(config, profile, lock, set_name, cache, config.mirror.url.rstrip("/"))
    stack.serve_as()
    fetch_hint = f"run `fm9g-deploy artifacts fetch --profile {profile.name} --model {config.model.name}`"
    if not stack.requirements_file().is_file():
        raise UserError(f"the {profile.name} wheels ({set_name}) are not all in the artifact cache "
                        f"{cache.root}; {fetch_hint}")
    absent = [a.filename for a in lock.installers() + lock.conda_packages() if not cache.has(a.sha256, a.filename)]
    if absent and profile.env.manager == "conda" and config.serving.serve_mode == "systemd":
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise UserError(f"{absent[0]}{more} of the {profile.name} lock are not in the artifact cache {cache.root}; "
                        f"{fetch_hint}")
    pin = cache.pins().get(config.model.name)
    if not pin or not cache.has(pin["sha256"], pin["filename"]):
        raise UserError(f"the {config.model.name} tarball is not in the artifact cache {cache.root}; {fetch_hint}")
    return stack


def provision_vars(stack: Stack) -> dict[str, Any]:
    from fm9g_deploy.artifacts.publish import file_url
    from fm9g_deploy.catalog import get_model

    config, profile, lock = stack.config, stack.profile, stack.lock
    pin = stack.model_pin()
    published = f"{stack.mirror_url}/{stack.published_path}"
    # In serve_mode container the env lives in the serving image: hosts get the model only.
    with_env = config.serving.serve_mode == "systemd"
    wheel_bytes = sum(a.size or 0 for a in lock.python_files(stack.set_name)) if with_env else 0
    required = (wheel_bytes * ENV_UNPACK_FACTOR + 2 * (pin.get("size") or 0)) / GIB
    values: dict[str, Any] = {
        "fm9g_preflight_install_root": layout.INSTALL_ROOT,
        "fm9g_preflight_required_gib": round(max(required, 1.0), 1),
        "fm9g_preflight_accelerator": profile.accelerator,
        "fm9g_preflight_cuda_version": profile.cuda_version or "",
        "fm9g_provision_env": with_env,
        "fm9g_python_env_manager": profile.env.manager,
        "fm9g_python_env_prefix": layout.env_prefix(profile.env.name),
        "fm9g_python_env_python": profile.env.python,
        "fm9g_python_env_system_packages": list(profile.system_packages),
        "fm9g_python_env_requirements_url": f"{published}/requirements.txt",
        "fm9g_python_env_requirements_sha256": stack.requirements_sha256(),
        "fm9g_python_env_find_links_url": f"{published}/",
        "fm9g_python_env_conda_root": layout.CONDA_ROOT,
        "fm9g_model_root": layout.model_root(config),
        "fm9g_model_tarball_url": file_url(stack.mirror_url, pin["sha256"], pin["filename"]),
        "fm9g_model_tarball_filename": pin["filename"],
        "fm9g_model_sha256": pin["sha256"],
        "fm9g_model_serve_as": stack.serve_as(),
        "fm9g_model_expected_shape": get_model(config.model.name).expected_shape(),
    }
    if profile.env.manager == "conda":
        installer = lock.miniforge_installer()
        values["fm9g_python_env_conda_installer_url"] = file_url(stack.mirror_url, installer.sha256, installer.filename)
        values["fm9g_python_env_conda_installer_sha256"] = installer.sha256
        values["fm9g_python_env_conda_packages"] = conda_packages(stack, required=with_env)
    return values


def conda_packages(stack: Stack, *, required: bool = True) -> list[dict[str, str]]:
    """The conda env's packages on the mirror, in the lock's (conda's link) order: what the env role
    downloads and creates the env from offline. UserError when the lock has none (and the hosts
    build the env): the env would then need the conda channel at provision time, which hosts never reach."""
    from fm9g_deploy.artifacts.conda import locked_packages
    from fm9g_deploy.artifacts.publish import file_url

    packages = locked_packages(stack.profile, stack.lock) if required else stack.lock.conda_packages()
    return [{"filename": a.filename, "sha256": a.sha256, "url": file_url(stack.mirror_url, a.sha256, a.filename)}
            for a in packages]


def serve_vars(stack: Stack, plan, api_key: str, accept_downtime: bool = False,
               networks: dict | None = None) -> dict[str, Any]:
    """What `deploy` tells playbooks/serve.yml: the plan as replica specs (a replica over hosts as one
    node spec per host; ``networks`` from fm9g_deploy.facts.read_hosts), and how to roll them out."""
    from fm9g_deploy.image.render import SERVE_UID
    from fm9g_deploy.replica_spec import deployment_specs, probe_argv, serve_settings, serves_api

    config, profile = stack.config, stack.profile
    settings = serve_settings(config, profile)
    specs = deployment_specs(config, profile, plan, networks)
    image = config.serving.container_image or stack.image_tag()
    every_spec = [spec for host_specs in specs.values() for spec in host_specs]
    headless = {host: [spec.index for spec in host_specs if not serves_api(spec.to_dict())]
                for host, host_specs in specs.items()}
    probe_key = hashlib.sha256(json.dumps([stack.revision(), settings, image]).encode()).hexdigest()
    return {
        "fm9g_plan": {host: [spec.to_dict() for spec in host_specs] for host, host_specs in specs.items()},
        # host -> the indexes of its headless nodes (replicas over hosts): no API, no gateway backend;
        # the rollout starts them before the heads they join.
        "fm9g_headless_nodes": {host: indexes for host, indexes in headless.items() if indexes},
        "fm9g_replica_mode": config.serving.serve_mode,
        "fm9g_replica_api_key": api_key,
        "fm9g_replica_revision": stack.revision(),
        "fm9g_replica_engine_probe": profile.engine_probe,
        "fm9g_replica_probe_argv": probe_argv(settings, every_spec, cache_key=probe_key) if every_spec else [],
        "fm9g_replica_container_image": image,
        "fm9g_replica_container_uid": SERVE_UID,
        # Replicas clients reach: a replica over hosts counts once, at its head.
        "fm9g_rollout_fleet_replicas": len(every_spec) - sum(len(indexes) for indexes in headless.values()),
        "fm9g_rollout_accept_downtime": accept_downtime,
        "fm9g_rollout_drain_timeout_s": config.serving.drain_timeout_s,
        "fm9g_gateway_port": config.serving.port,
    }
