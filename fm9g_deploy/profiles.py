"""Stack profiles: the whole runtime of a host (env manager, Python, torch, deps, vLLM), pinned.

One YAML file per profile in data/profiles/. `fm9g-deploy artifacts lock` turns a profile into a
lock of exact files (locks/<profile>.json); the profile says what to ask for, the lock what was got.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fm9g_deploy.errors import UserError

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
HttpUrl = Annotated[str, Field(pattern=r"^https?://\S+$")]

_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(x86_64|aarch64)$")
#: The conda subdir of each architecture a manylinux tag names.
_CONDA_SUBDIR = {"x86_64": "linux-64", "aarch64": "linux-aarch64"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def filename_from_url(url: str) -> str:
    """The file name a URL ends in, percent-decoded (torch-2.3.0%2Bcu121-... -> torch-2.3.0+cu121-...)."""
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


class EnvSpec(_Strict):
    manager: Literal["conda", "venv"]
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    #: The interpreter version: "3.10.16" (conda installs exactly this) or "3.11" (the host's).
    python: str = Field(pattern=r"^3\.\d+(\.\d+)?$")


class PinnedFile(_Strict):
    """A Python package taken from one exact file that is not on the index (torch's own builds)."""

    name: str
    version: str
    url: HttpUrl
    sha256: Sha256
    size: int | None = None
    #: An index requirement with the same dependencies, resolved in the file's place when the file
    #: is not at hand (it is swapped back for the file in the lock).
    stand_in: str | None = None

    @property
    def filename(self) -> str:
        return filename_from_url(self.url)


class InstallerFile(_Strict):
    """A non-Python download the hosts need (the conda installer)."""

    name: str
    version: str
    url: HttpUrl
    sha256: Sha256
    size: int | None = None

    @property
    def filename(self) -> str:
        return filename_from_url(self.url)


class CondaSpec(_Strict):
    """The conda packages of a conda env (Python itself and what comes with it), locked as exact files.

    `fm9g-deploy artifacts lock` asks conda (from the locked Miniforge installer) what
    `conda create SPECS` would link from ``channel`` for ``platform``; the hosts then create the env
    offline from those files on the mirror, never from the channel.
    """

    #: A channel name (conda-forge: https://conda.anaconda.org/conda-forge) or a channel URL.
    channel: str = Field(min_length=1, pattern=r"^(https?://\S+|[A-Za-z0-9][A-Za-z0-9._-]*)$")
    #: What `conda create` is asked for: match specs without spaces, e.g. python=3.10.16 and pip.
    specs: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]\S*$")]] = Field(min_length=1)
    #: The conda subdir of the hosts.
    platform: Literal["linux-64", "linux-aarch64"] = "linux-64"

    @property
    def channel_url(self) -> str:
        """The channel as a URL, so no channel_alias of the control node's conda config redirects it."""
        if "://" in self.channel:
            return self.channel.rstrip("/")
        return f"https://conda.anaconda.org/{self.channel}"


class PythonPackages(_Strict):
    #: What to install, as pip requirements; resolved with their dependencies for the target.
    requirements: list[str] = Field(default_factory=list)
    #: Pip constraints applied while resolving (caps, not extra packages).
    constraints: list[str] = Field(default_factory=list)
    #: Packages left out of the lock even though something asks for them.
    exclude: list[str] = Field(default_factory=list)
    pinned_files: list[PinnedFile] = Field(default_factory=list)


class VllmSpec(_Strict):
    #: "index": vLLM is one of the requirements; "operator": the operator registers the wheel file.
    source: Literal["index", "operator"]
    #: The operator's wheel file name (shared by every family: families differ by sha256 only).
    filename: str | None = None
    #: The model catalog's vllm_wheel_family values this profile can serve.
    families: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _operator_needs_filename(self) -> VllmSpec:
        if self.source == "operator" and not self.filename:
            raise ValueError("vllm.filename is required when vllm.source is operator")
        return self


class Profile(_Strict):
    name: str
    description: str
    accelerator: Literal["cpu", "cuda"]
    cuda_version: str | None = None
    env: EnvSpec
    #: The newest manylinux platform tag the hosts accept, e.g. manylinux_2_28_x86_64.
    platform: str
    index_url: HttpUrl = "https://pypi.org/simple"
    python_packages: PythonPackages = Field(default_factory=PythonPackages)
    vllm: VllmSpec
    installers: list[InstallerFile] = Field(default_factory=list)
    #: conda profiles only: the env's conda packages, locked so hosts create the env offline.
    conda: CondaSpec | None = None
    #: OS packages the wheels need at run time (from the host's own package repositories).
    system_packages: list[str] = Field(default_factory=list)
    #: Extra arguments for every vLLM server of this profile.
    vllm_args: list[str] = Field(default_factory=list)
    #: The vLLM option that lets in-flight requests finish on SIGTERM, taking seconds
    #: (`--shutdown-timeout`, vLLM 0.18 and later); unset where the build has none (the 0.5 fork
    #: aborts in-flight work on SIGTERM, so the gateway's drain is all there is).
    vllm_drain_flag: str | None = Field(None, pattern=r"^--[a-z0-9-]+$")
    #: vLLM arguments that turn off its paths that would use NVLink multicast, added to every
    #: replica when the config says `serving.nvlink_multicast: false` (see replica_spec.py).
    vllm_multicast_off_args: list[str] = Field(default_factory=list)
    #: Run a tiny forward pass of the engine on each host in the planned dtype before serving, and
    #: fall back to float32 when it faults (CPU builds: bf16 kernels die with SIGILL on some CPUs).
    engine_probe: bool = False
    #: How the profile's vLLM serves FM9G checkpoints. "native": its vLLM knows FM9GForCausalLM (the
    #: guide's 0.5 fork); "upstream": upstream vLLM, which serves FM9G through the catalog's
    #: `upstream_architecture` (the model's config is rewritten to it when the model is unpacked).
    architecture_mapping: Literal["native", "upstream"] = "native"
    #: How this profile's vLLM spans hosts with one replica, when the model needs more GPUs than one
    #: host has: "pipeline" (tensor parallel within a host, pipeline parallel across hosts), "tensor"
    #: (tensor parallel across hosts), or None (it cannot: the planner refuses such a model).
    multi_host: Literal["pipeline", "tensor"] | None = None
    #: What starts a replica over several hosts: "mp" (vLLM's own multi-node launcher: the head runs
    #: the API server with --nnodes/--node-rank, every other host a headless worker) or "ray" (a Ray
    #: cluster of the hosts, the head's server with --distributed-executor-backend ray).
    multi_host_launcher: Literal["mp", "ray"] | None = None

    @field_validator("platform")
    @classmethod
    def _manylinux(cls, value: str) -> str:
        if not _MANYLINUX.match(value):
            raise ValueError(f"{value!r} is not a manylinux_<major>_<minor>_<arch> tag")
        return value

    @model_validator(mode="after")
    def _multi_host_has_a_launcher(self) -> Profile:
        if bool(self.multi_host) != bool(self.multi_host_launcher):
            raise ValueError("multi_host and multi_host_launcher go together: a profile that spans hosts says "
                             "what starts the replica over them (mp or ray), and one that does not sets neither")
        return self

    @model_validator(mode="after")
    def _conda_section_fits_the_env(self) -> Profile:
        if self.conda is None:
            return self
        if self.env.manager != "conda":
            raise ValueError(f"conda: only a profile whose env.manager is conda has conda packages "
                             f"(this one's is {self.env.manager})")
        arch = _MANYLINUX.match(self.platform).group(3)
        if _CONDA_SUBDIR[arch] != self.conda.platform:
            raise ValueError(f"conda.platform {self.conda.platform} is not the hosts' ({_CONDA_SUBDIR[arch]}, "
                             f"from platform {self.platform})")
        python = {f"python={self.env.python}", f"python=={self.env.python}"}
        if not python & set(self.conda.specs):
            raise ValueError(f"conda.specs must pin python={self.env.python} (the profile's env.python)")
        return self

    @property
    def python_version(self) -> str:
        """major.minor of the target interpreter."""
        return ".".join(self.env.python.split(".")[:2])

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    def pip_platforms(self) -> list[str]:
        """Every platform tag the hosts accept, newest first.

        pip does not widen a PEP 600 tag (manylinux_2_28) to the older ones by itself, so the lock
        passes them all, plus plain linux_<arch> for pinned files built outside manylinux.
        """
        major, minor, arch = _MANYLINUX.match(self.platform).groups()
        newest = int(minor)
        tags = [f"manylinux_{major}_{m}_{arch}" for m in range(newest, 4, -1)]
        # The pre-PEP 600 names of glibc 2.17, 2.12 and 2.5 (the last two exist for x86 only).
        legacy = [(17, "manylinux2014")] + ([(12, "manylinux2010"), (5, "manylinux1")] if arch == "x86_64" else [])
        tags += [f"{alias}_{arch}" for glibc_minor, alias in legacy if major == "2" and newest >= glibc_minor]
        tags.append(f"linux_{arch}")
        return tags

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of the target hosts (pip would otherwise use this interpreter's)."""
        full = self.env.python if self.env.python.count(".") == 2 else f"{self.env.python}.0"
        arch = _MANYLINUX.match(self.platform).group(3)
        return {
            "implementation_name": "cpython",
            "implementation_version": full,
            "os_name": "posix",
            "platform_machine": arch,
            "platform_python_implementation": "CPython",
            "platform_system": "Linux",
            "python_full_version": full,
            "python_version": self.python_version,
            "sys_platform": "linux",
        }


def _profiles_folder():
    return resources.files("fm9g_deploy").joinpath("data/profiles")


def profile_names() -> list[str]:
    return sorted(p.name.removesuffix(".yml") for p in _profiles_folder().iterdir() if p.name.endswith(".yml"))


@cache
def load_profile(name: str) -> Profile:
    """The validated profile ``name``; UserError naming the choices when it does not exist."""
    if name not in profile_names():
        raise UserError(f"unknown stack profile {name!r}; choose one of {', '.join(profile_names())}")
    text = _profiles_folder().joinpath(f"{name}.yml").read_text("utf-8")
    try:
        return Profile.model_validate({"name": name, **(yaml.safe_load(text) or {})})
    except ValidationError as exc:
        from fm9g_deploy.config import describe_validation_error

        raise UserError(f"profile {name}: {describe_validation_error(exc)}") from None


def operator_families() -> dict[str, str]:
    """vLLM wheel family -> the profile whose operator-supplied wheel it is."""
    return {family: profile.name for profile in map(load_profile, profile_names())
            if profile.vllm.source == "operator" for family in profile.vllm.families}
