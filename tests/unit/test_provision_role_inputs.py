"""The provisioning roles' inputs have one home each.

What `fm9g-deploy provision` always passes (fm9g_deploy/hostvars.py: provision_vars) is required
by the role's argument spec and has no default in the role, so a run without it stops at argument
validation naming it; what the Python never passes is a documented default, the same in
meta/argument_specs.yml and defaults/main.yml. The roles do not restate the host layout
(fm9g_deploy/layout.py); the env role reads the package manager itself where no preflight ran,
and the preflight finds nvidia-smi where `fm9g-deploy plan` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from fm9g_deploy import layout
from fm9g_deploy.ansible import ansible_env, ansible_executable
from fm9g_deploy.artifacts.lock import load_lock
from fm9g_deploy.config import parse_config
from fm9g_deploy.hostvars import Stack, provision_vars
from fm9g_deploy.paths import PLAYBOOKS_DIR, ROLES_DIR
from fm9g_deploy.profiles import load_profile
from tests.unit.check_mode_mirror import MODEL, check_mode_cache
from tests.unit.test_gpu import H100, SMI_FIXTURES
from tests.unit.role_render import role_value
from tests.unit.test_gpu_profile_render import lock_with_operator_wheel

ROLES = ("fm9g_preflight", "fm9g_python_env", "fm9g_model")
#: A profile each way the env is made: venv on CPU, conda (the guide's GPU stack), venv on GPU.
PROFILES = {"cpu": "tiny-random", "cuda121": MODEL, "cuda130": MODEL}
#: Run only what is tagged always: the roles' argument validation, nothing on the host.
VALIDATION_ONLY = "fm9g_argument_validation"


def _options(role: str) -> dict:
    specs = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def _defaults(role: str) -> dict:
    path = ROLES_DIR / role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


@pytest.fixture(scope="module")
def passed(tmp_path_factory) -> dict[str, dict]:
    """provision_vars of each profile (a stand-in cache; provision_vars asks no mirror)."""
    values = {}
    for profile, model in PROFILES.items():
        root = tmp_path_factory.mktemp(f"inputs-{profile}")
        lock = lock_with_operator_wheel() if profile == "cuda121" else load_lock(profile)
        cache, set_name = check_mode_cache(root, profile, lock, model)
        mirror = "http://127.0.0.1:9"
        config = parse_config(f"model:\n  name: {model}\nprofile: {profile}\nmirror:\n  url: {mirror}\n")
        values[profile] = provision_vars(Stack(config, load_profile(profile), lock, set_name, cache, mirror))
    return values


@pytest.mark.parametrize("role", ROLES)
def test_what_provision_always_passes_is_required_and_has_no_default(role, passed):
    options, defaults = _options(role), _defaults(role)
    keys = [{key for key in values if key.startswith(role + "_")} for values in passed.values()]
    always, sometimes = set.intersection(*keys), set.union(*keys) - set.intersection(*keys)
    required = {name for name, option in options.items() if option.get("required")}
    assert set.union(*keys) <= set(options), "every input the Python passes is declared"
    assert required == always
    for name in required:
        assert "default" not in options[name] and name not in defaults, name
    # Passed for some profiles only (conda's installer): optional, or the others would fail.
    assert not sometimes & required


@pytest.mark.parametrize("role", ROLES)
def test_defaults_file_holds_exactly_the_optional_inputs_with_the_specs_defaults(role):
    options, defaults = _options(role), _defaults(role)
    with_default = {name: option["default"] for name, option in options.items() if "default" in option}
    assert defaults == with_default
    for name, option in options.items():
        # The role's own optional inputs have a documented default; a shared host var (the
        # preflight's fm9g_nvidia_smi) may be unset, then the module's own default applies.
        if not option.get("required") and name.startswith(role + "_"):
            assert "default" in option, name


@pytest.mark.parametrize("role", ROLES)
def test_the_roles_do_not_restate_the_host_layout(role):
    for path in sorted((ROLES_DIR / role).rglob("*")):
        if path.is_file():
            text = path.read_text()
            for where in (layout.INSTALL_ROOT, layout.CONFIG_DIR):
                assert where not in text, f"{path.relative_to(ROLES_DIR)} restates {where}"


def _playbook(playbook, values: dict, tmp_path, *args: str, host_vars: dict | None = None,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """ansible-playbook in check mode against this machine (local connection), as a person runs it."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"children": {"serving": {"hosts": {"here": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, **(host_vars or {})}}}}}}))
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(values))
    return subprocess.run([ansible_executable(), "-i", str(inventory), str(playbook), "-e", f"@{extra}",
                           "--check", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ansible_env(), **(env or {})})


def test_provision_validates_every_roles_inputs(passed, tmp_path):
    run = _playbook(PLAYBOOKS_DIR / "provision.yml", passed["cpu"], tmp_path, "--tags", VALIDATION_ONLY)
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.count("Validating arguments against arg spec 'main'") == len(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_provision_without_a_roles_inputs_stops_at_validation_naming_them(role, passed, tmp_path):
    values = {key: value for key, value in passed["cpu"].items() if not key.startswith(role + "_")}
    run = _playbook(PLAYBOOKS_DIR / "provision.yml", values, tmp_path, "--tags", VALIDATION_ONLY)
    assert run.returncode != 0
    missing = sorted(name for name, option in _options(role).items() if option.get("required"))
    assert f"missing required arguments: {', '.join(missing)}" in run.stdout, run.stdout[-3000:]


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="the check reads a Debian host's packages")
def test_the_env_role_alone_reads_the_package_manager_itself(passed, tmp_path):
    playbook = tmp_path / "env.yml"
    playbook.write_text(yaml.safe_dump([{"name": "The env role without the preflight", "hosts": "serving",
                                         "gather_facts": False, "roles": ["fm9g_python_env"]}]))
    values = {**passed["cpu"], "fm9g_python_env_system_packages": ["dpkg"]}  # on every Debian host
    run = _playbook(playbook, values, tmp_path, "--tags", "fm9g_python_env_system")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "ok: [here]" in run.stdout.split("Read the package manager", 1)[1].split("TASK", 1)[0]


def test_the_preflight_reads_gpus_with_the_nvidia_smi_plan_reads(passed, tmp_path):
    """A host whose nvidia-smi is off PATH names it once (fm9g_nvidia_smi): plan and preflight both use it."""
    double = tmp_path / "nvidia-smi"
    double.write_text(f'#!/bin/sh\nexec sh "{SMI_FIXTURES / "nvidia-smi-double.sh"}" "$@"\n')
    double.chmod(0o755)
    run = _playbook(PLAYBOOKS_DIR / "provision.yml", passed["cuda130"], tmp_path, "--tags", "fm9g_preflight_gpu",
                    host_vars={"fm9g_nvidia_smi": str(double)}, env={"FM9G_NVIDIA_SMI_DOUBLE_DIR": str(H100)})
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Check the driver supports the profile's CUDA" in run.stdout


def test_a_conda_env_without_the_miniforge_installer_is_refused_before_anything_is_fetched(passed, tmp_path):
    values = {key: value for key, value in passed["cuda121"].items()
              if not key.startswith("fm9g_python_env_conda_installer_")}
    run = _playbook(PLAYBOOKS_DIR / "provision.yml", values, tmp_path, "--tags", "env")
    assert run.returncode != 0
    assert "a conda env needs fm9g_python_env_conda_installer_url" in run.stdout, run.stdout[-3000:]
    assert "Download the Miniforge installer" not in run.stdout


def test_a_conda_env_without_the_locked_conda_packages_is_refused_before_anything_is_fetched(passed, tmp_path):
    values = {**passed["cuda121"], "fm9g_python_env_conda_packages": []}
    run = _playbook(PLAYBOOKS_DIR / "provision.yml", values, tmp_path, "--tags", "env")
    assert run.returncode != 0
    assert "a conda env needs fm9g_python_env_conda_packages" in run.stdout, run.stdout[-3000:]
    assert "Download the Miniforge installer" not in run.stdout


def test_the_conda_env_is_created_offline_from_an_explicit_spec_of_the_packages_in_lock_order(passed):
    values = {key: value for key, value in passed["cuda121"].items() if key.startswith("fm9g_python_env_")}
    packages = values["fm9g_python_env_conda_packages"]
    assert len(packages) > 1
    create = role_value("{{ _fm9g_python_env_conda_create_argv }}", "fm9g_python_env", **values)
    spec_path = f"{layout.CONDA_ROOT}/fm9g-pkgs/fm-9g.explicit.txt"
    assert create == [f"{layout.CONDA_ROOT}/bin/conda", "create", "--yes", "--quiet", "--offline",
                      "--prefix", layout.env_prefix("fm-9g"), "--file", spec_path]
    assert role_value("{{ _fm9g_python_env_conda_explicit }}", "fm9g_python_env", **values) == spec_path
    spec = role_value("{{ _fm9g_python_env_conda_explicit_text }}", "fm9g_python_env", **values)
    lines = [line for line in spec.splitlines() if not line.startswith("#")]
    assert lines == ["@EXPLICIT"] + [f"file://{layout.CONDA_ROOT}/fm9g-pkgs/{p['filename']}" for p in packages]
    assert spec.endswith("\n")


def test_the_conda_packages_are_downloaded_with_their_sha256_into_the_spec_folder():
    tasks = yaml.safe_load((ROLES_DIR / "fm9g_python_env" / "tasks" / "conda.yml").read_text())
    download = next(task for task in tasks if task["name"] == "Download the locked conda packages from the mirror")
    assert download["loop"] == "{{ fm9g_python_env_conda_packages }}"
    assert download["ansible.builtin.get_url"] == {
        "url": "{{ item.url }}", "dest": "{{ _fm9g_python_env_conda_pkgs_dir }}/{{ item.filename }}",
        "checksum": "sha256:{{ item.sha256 }}", "mode": "0644"}
    names = [task["name"] for task in tasks]
    assert names.index("Check the locked conda packages are given") < names.index(
        "Download the Miniforge installer from the mirror") < names.index(download["name"]) < names.index(
        "Write the explicit spec of the locked conda packages (in the order conda links them)") < \
        next(i for i, name in enumerate(names) if name.startswith("Create the conda env"))
    create = next(task for task in tasks if task["name"].startswith("Create the conda env"))
    assert create["ansible.builtin.command"]["creates"] == "{{ fm9g_python_env_prefix }}/bin/python"
