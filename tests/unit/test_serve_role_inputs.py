"""The serving roles' inputs have one home each, as the provisioning roles' do
(tests/unit/test_provision_role_inputs.py): what `deploy` always passes (hostvars.serve_vars) is
required without a default; the defaults file holds exactly the optional inputs; the roles do not
restate the host layout (fm9g_deploy/layout.py), which every playbook run gets as fm9g_layout."""

from __future__ import annotations

import pytest
import yaml

from fm9g_deploy import layout
from fm9g_deploy.artifacts.lock import load_lock
from fm9g_deploy.config import parse_config
from fm9g_deploy.hostvars import Stack, serve_vars
from fm9g_deploy.paths import ROLES_DIR
from fm9g_deploy.planner import plan_deployment
from fm9g_deploy.profiles import load_profile
from tests.unit.check_mode_mirror import check_mode_cache
from tests.unit.test_planner import NO_GPU

ROLES = ("fm9g_replica", "fm9g_rollout", "fm9g_gateway")


def _options(role: str) -> dict:
    specs = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def _defaults(role: str) -> dict:
    return yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text()) or {}


@pytest.fixture(scope="module")
def passed(tmp_path_factory) -> dict:
    values = {}
    for mode in ("systemd", "container"):
        cache, set_name = check_mode_cache(tmp_path_factory.mktemp(mode), "cpu", load_lock("cpu"), "tiny-random")
        config = parse_config(f"model: {{name: tiny-random}}\nprofile: cpu\nmirror: {{url: 'http://127.0.0.1:9'}}\n"
                              f"serving: {{serve_mode: {mode}}}\n")
        stack = Stack(config, load_profile("cpu"), load_lock("cpu"), set_name, cache, "http://127.0.0.1:9")
        values[mode] = serve_vars(stack, plan_deployment(config, {"host1": NO_GPU}), "the-key")
    return values


@pytest.mark.parametrize("role", ROLES)
def test_what_deploy_always_passes_is_required_and_has_no_default(role, passed):
    options, defaults = _options(role), _defaults(role)
    for values in passed.values():
        mine = {key for key in values if key.startswith(role + "_")}
        assert mine <= set(options), f"{role}: undeclared inputs {sorted(mine - set(options))}"
        for name in mine:
            assert options[name].get("required") and "default" not in options[name], name
            assert name not in defaults, name
    required = {name for name, option in options.items() if option.get("required")}
    # fm9g_layout comes with every playbook run; the gateway's backends from the play.
    assert required <= set(passed["systemd"]) | {"fm9g_layout", "fm9g_gateway_backends"}, "every required input is passed"


@pytest.mark.parametrize("role", ROLES)
def test_defaults_file_holds_exactly_the_optional_inputs_with_the_specs_defaults(role):
    options = _options(role)
    assert _defaults(role) == {name: option["default"] for name, option in options.items() if "default" in option}


@pytest.mark.parametrize("role", ROLES)
def test_the_roles_do_not_restate_the_host_layout(role):
    for path in sorted((ROLES_DIR / role).rglob("*")):
        if path.is_file() and path.suffix in (".yml", ".j2"):
            text = path.read_text()
            for where in (layout.INSTALL_ROOT, layout.CONFIG_DIR, layout.STATE_DIR, layout.PROGRAMS_DIR):
                assert where not in text, f"{path.relative_to(ROLES_DIR)} restates {where}"


def test_the_plan_reaches_the_roles_as_replica_specs(passed):
    spec = passed["systemd"]["fm9g_plan"]["host1"][0]
    assert spec["unit"] == "fm9g-replica@0.service" and spec["argv"][spec["argv"].index("--") + 1:][:3] == [
        layout.env_python("fm9g-cpu"), "-m", "vllm.entrypoints.openai.api_server"]
    assert passed["container"]["fm9g_plan"]["host1"][0]["mounts"][0][1] == layout.CONTAINER_MODEL_DIR
