"""The deployment config: one declarative, validated file per deployment (fm9g.yml).

Every default lives in the models below. Loading never raises anything but UserError for a
mistake in the file, so the CLI can print one line and exit 2 before anything runs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fm9g_deploy.catalog import model_names
from fm9g_deploy.errors import UserError
from fm9g_deploy.paths import CONFIG_FILENAME

Port = Annotated[int, Field(ge=1, le=65535)]


def profile_names() -> list[str]:
    folder = resources.files("fm9g_deploy").joinpath("data/profiles")
    return sorted(p.name.removesuffix(".yml") for p in folder.iterdir() if p.name.endswith(".yml"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(_Strict):
    name: str = "fm9g-4b"
    #: Directory on each host that holds the unpacked model (the one with config.json).
    install_dir: str = "/opt/fm9g/models"

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in model_names():
            raise ValueError(f"unknown model {value!r}; choose one of {', '.join(model_names())}")
        return value


class ServingConfig(_Strict):
    served_model_name: str = Field("9g", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    #: The gateway's port on every serving host (the guide's 8020).
    port: Port = 8020
    #: First loopback port of the replicas on a host; replica i listens on base + i.
    replica_base_port: Port = 8100
    #: The API key. Leave unset to have a strong one generated once and kept on the control node.
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    tokenizer_mode: Literal["auto", "slow"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = True
    serve_mode: Literal["systemd", "container"] = "systemd"
    #: The image of serve_mode container; unset: the profile's image as `fm9g-deploy image build` tags it.
    container_image: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")] | None = None
    # Planner overrides: leave unset to let the planner choose per host.
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] | None = None
    replicas_per_host: Annotated[int, Field(ge=1, le=64)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    #: KV-cache space in GiB for CPU hosts (vLLM's VLLM_CPU_KVCACHE_SPACE).
    cpu_kvcache_space_gib: Annotated[int, Field(ge=1, le=1024)] = 1
    #: How long a replica leaving service (stop, rolling update) may finish its in-flight requests
    #: after the gateway stopped sending it new ones; systemd's and Docker's stop timeouts follow it.
    drain_timeout_s: Annotated[int, Field(ge=0, le=3600)] = 120
    #: A replica whose engine dies comes back by itself, with a growing pause; after this many
    #: crashes within crash_window_s it is marked failed with the reason instead.
    crash_limit: Annotated[int, Field(ge=1, le=100)] = 5
    crash_window_s: Annotated[int, Field(ge=10, le=86400)] = 600

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; remove it to have a key generated, or set a non-empty key")
        return value


class MirrorConfig(_Strict):
    #: Base URL the hosts fetch artifacts from (the artifact mirror). Unset: the sandbox mirror.
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None
    #: Control-node directory holding the fetched artifacts; unset: the per-user cache.
    cache_dir: Path | None = None


class DeploymentConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    profile: str = "cuda121"
    serving: ServingConfig = Field(default_factory=ServingConfig)
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_mean_defaults(cls, data: Any) -> Any:
        # A section whose keys are all commented out parses as None: treat it as empty.
        if isinstance(data, dict):
            return {key: ({} if value is None and key in ("model", "serving", "mirror") else value)
                    for key, value in data.items()}
        return data

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in profile_names():
            raise ValueError(f"unknown stack profile {value!r}; choose one of {', '.join(profile_names())}")
        return value


def default_config_path(inventory: Path | None) -> Path:
    """fm9g.yml beside the inventory (a file or a directory), else in the working directory."""
    if inventory is None:
        return Path(CONFIG_FILENAME)
    folder = inventory if inventory.is_dir() else inventory.parent
    return folder / CONFIG_FILENAME


def load_config(path: Path) -> DeploymentConfig:
    """Read and validate ``path``; any mistake becomes a one-line UserError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"config file {path} not found; pass --config FILE or create {CONFIG_FILENAME} beside "
            "the inventory (inventory/fm9g.yml is an example)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {_first_line(str(exc))}") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = CONFIG_FILENAME) -> DeploymentConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or _first_line(str(exc))
        raise UserError(f"{source}: not valid YAML{where}: {problem}; fix the syntax there") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a mapping of sections (model, profile, serving, mirror)")
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first error of ``exc`` as 'field: problem; fix', plus how many more there are."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = _explain(first)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{field}: {message}{more}"


def _explain(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key; remove it or check its spelling ({_valid_keys(error['loc'])})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        limit = next(iter(ctx.values()))
        return f"must be {bound} {limit} (got {got!r}); set a value in range"
    if kind == "literal_error":
        return f"got {got!r}; use {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"{got!r} is not of the expected form; see inventory/fm9g.yml for an example"
    if kind == "missing":
        return "is required; add it"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{error['msg'].lower()} (got {got!r}); change the value's type"
    return f"{error['msg']}; see inventory/fm9g.yml for an example"


def _valid_keys(loc: tuple) -> str:
    model: type[BaseModel] = DeploymentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return "valid keys: " + ", ".join(model.model_fields)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
