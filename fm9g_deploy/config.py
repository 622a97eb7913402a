"""The deployment config: one declarative, validated file per deployment (fm9g.yml).

Every default lives in the models below. Loading never raises anything but UserError for a
mistake in the file, so the CLI can print one line and exit 2 before anything runs.
"""

from __future__ import annotations

import reprlib
from importlib import resources
from pathlib import Path, PurePosixPath
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
from fm9g_deploy.keyformat import deployment_key_problem
from fm9g_deploy.paths import CONFIG_FILENAME

Port = Annotated[int, Field(ge=1, le=65535)]
#: A deployment config is a few hundred bytes; anything this big is the wrong file.
MAX_CONFIG_BYTES = 1024 * 1024
#: Deeper than this is no config of ours (and deep nesting would exhaust the parser's stack).
MAX_NESTING = 32
#: The longest context any served model has, with room to spare; bounds the planner's arithmetic.
MAX_MODEL_LEN = 1 << 20
#: Config paths (dotted) whose values are never shown in a message.
SECRET_FIELDS = ("serving.api_key",)


def profile_names() -> list[str]:
    folder = resources.files("fm9g_deploy").joinpath("data/profiles")
    return sorted(p.name.removesuffix(".yml") for p in folder.iterdir() if p.name.endswith(".yml"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def host_path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a directory on the hosts, or None. Host paths go into systemd units
    and Ansible tasks that run from other directories, so they must be absolute and plain."""
    if not value.startswith("/"):
        return "must be an absolute path on the hosts (starting with /)"
    if any(not char.isprintable() for char in value):
        return "holds a control or non-printable character; write a plain absolute path"
    if ".." in PurePosixPath(value).parts:
        return "must not contain '..'; write the directory it means"
    return None


class ModelConfig(_Strict):
    name: str = "fm9g-4b"
    #: Directory on each host that holds the unpacked model (the one with config.json).
    install_dir: Annotated[str, Field(max_length=1024)] = "/opt/fm9g/models"

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in model_names():
            raise ValueError(f"unknown model {_shown(value)}; choose one of {', '.join(model_names())}")
        return value

    @field_validator("install_dir")
    @classmethod
    def _absolute_host_path(cls, value: str) -> str:
        problem = host_path_problem(value)
        if problem:
            raise ValueError(f"{_shown(value, 240)} {problem}, e.g. /opt/fm9g/models")
        return value


class ServingConfig(_Strict):
    served_model_name: str = Field("9g", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
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
    container_image: Annotated[str, Field(max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")] | None = None
    # Planner overrides: leave unset to let the planner choose per host.
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] | None = None
    replicas_per_host: Annotated[int, Field(ge=1, le=64)] | None = None
    #: CPU profiles: one replica over the first N serving hosts, tensor parallel across them (the
    #: sandbox's rehearsal of a GPU fleet's replica over hosts). GPU fleets leave it unset: the
    #: planner spans hosts where no host holds the model alone.
    hosts_per_replica: Annotated[int, Field(ge=2, le=64)] | None = None
    #: A replica over hosts: the head's port the other nodes join its engine on (vLLM's
    #: --master-port), and every node's supervisor status port (how the nodes stay in step).
    rendezvous_port: Port = 29500
    node_status_port: Port = 29510
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    max_model_len: Annotated[int, Field(ge=16, le=MAX_MODEL_LEN)] | None = None
    #: KV-cache space in GiB for CPU hosts (vLLM's VLLM_CPU_KVCACHE_SPACE).
    cpu_kvcache_space_gib: Annotated[int, Field(ge=1, le=1024)] = 1
    #: How long a replica leaving service (stop, rolling update) may finish its in-flight requests
    #: after the gateway stopped sending it new ones; systemd's and Docker's stop timeouts follow it.
    drain_timeout_s: Annotated[int, Field(ge=0, le=3600)] = 120
    #: A replica whose engine dies comes back by itself, with a growing pause; after this many
    #: crashes within crash_window_s it is marked failed with the reason instead.
    crash_limit: Annotated[int, Field(ge=1, le=100)] = 5
    crash_window_s: Annotated[int, Field(ge=10, le=86400)] = 600
    #: false: every replica on a GPU runs with vLLM's, NCCL's, torch's and NVSHMEM's NVLink multicast
    #: (and symmetric-memory all-reduce) paths off, for hosts whose operators must keep it off.
    nvlink_multicast: bool = True

    @field_validator("api_key")
    @classmethod
    def _key_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        problem = deployment_key_problem(value.get_secret_value())
        if problem == "is empty":
            raise ValueError("is empty; remove it to have a key generated, or set a non-empty key")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("api_key_file")
    @classmethod
    def _key_file_readable(cls, value: Path | None) -> Path | None:
        # Checked on every load, so `config check` finds a wrong path before deploy needs the key.
        if value is None:
            return value
        if not value.is_file():
            missing = "does not exist" if not value.exists() else "is not a file"
            raise ValueError(f"{_shown(str(value), 240)} {missing}; create it with the key, or fix the path")
        try:
            with value.open("rb") as handle:
                content = handle.read(4096)
        except OSError as exc:
            raise ValueError(f"{_shown(str(value), 240)}: cannot read it ({exc.strerror}); fix its permissions "
                             "or run as a user who can read it") from None
        try:
            key = content.decode("utf-8").strip()
        except UnicodeDecodeError:
            key = "\ufffd"  # not text: reported as an unusable character below
        problem = deployment_key_problem(key)
        if problem:  # says what is wrong with the key, never what the key is
            raise ValueError(f"the key in {_shown(str(value), 240)} {problem}")
        return value

    @model_validator(mode="after")
    def _one_key_and_free_ports(self) -> "ServingConfig":
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("api_key and api_key_file are both set; keep one of them")
        # The planner repeats these checks per host; here they catch what every host would hit.
        first = self.replica_base_port
        if self.port == first:
            raise ValueError(f"port {self.port} is also replica_base_port, the port of replica 0; "
                             "move one of them")
        if self.replicas_per_host is not None:
            last = first + self.replicas_per_host - 1
            if last > 65535:
                raise ValueError(f"{self.replicas_per_host} replicas from replica_base_port {first} run past "
                                 "port 65535; lower replica_base_port")
            if first <= self.port <= last:
                raise ValueError(f"replica ports {first}-{last} include the gateway's port {self.port}; "
                                 "move replica_base_port or port")
        last = first + (self.replicas_per_host or 1) - 1
        taken = {self.port: "the gateway's port"}
        for name in ("rendezvous_port", "node_status_port"):
            value = getattr(self, name)
            if first <= value <= last:
                taken[value] = f"a replica's port ({first}-{last})"
            if value in taken:
                raise ValueError(f"{name} {value} is also {taken[value]}; move one of them")
            taken[value] = name
        return self


class MirrorConfig(_Strict):
    #: Base URL the hosts fetch artifacts from (the artifact mirror). Unset: the sandbox mirror.
    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None
    #: Control-node directory holding the fetched artifacts; unset: the per-user cache.
    cache_dir: Path | None = None


class AlertThresholds(_Strict):
    #: KV-cache usage (0..1) above which a replica is about to preempt or queue requests.
    kv_cache_usage: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.9
    #: Requests waiting on one replica, held for queue_for_s, that mean it cannot keep up.
    requests_waiting: Annotated[int, Field(ge=1, le=100000)] = 4
    queue_for_s: Annotated[int, Field(ge=0, le=86400)] = 120
    #: 95th percentile of time to first token, in seconds, over five minutes.
    ttft_p95_s: Annotated[float, Field(gt=0.0, le=3600.0, allow_inf_nan=False)] = 5.0
    #: Engine restarts within restart_window_s that make a restart loop.
    restarts: Annotated[int, Field(ge=1, le=1000)] = 3
    restart_window_s: Annotated[int, Field(ge=60, le=86400)] = 900


class MonitoringConfig(_Strict):
    #: Prometheus scraping every replica, gateway and host, with alerting rules (off unless set;
    #: the sandbox's config turns it on).
    enabled: bool = False
    #: The inventory host that runs Prometheus; unset: the first `gateway` host, else the first
    #: `serving` host.
    host: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    scrape_interval_s: Annotated[int, Field(ge=1, le=3600)] = 15
    #: The metrics door on every host (nginx): each replica's, the gateway's and the host's metrics,
    #: open to the monitoring host only, never through the public gateway port.
    scrape_port: Port = 9180
    #: Prometheus's own port, on the monitoring host's loopback.
    prometheus_port: Port = 9090
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 15
    alerts: AlertThresholds = Field(default_factory=AlertThresholds)


class DeploymentConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    profile: str = "cuda121"
    serving: ServingConfig = Field(default_factory=ServingConfig)
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_mean_defaults(cls, data: Any) -> Any:
        # A section whose keys are all commented out parses as None: treat it as empty.
        if isinstance(data, dict):
            return {key: ({} if value is None and key in ("model", "serving", "mirror", "monitoring") else value)
                    for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _monitoring_ports_free(self) -> "DeploymentConfig":
        serving, monitoring = self.serving, self.monitoring
        taken = {serving.port: "serving.port"}
        if serving.replicas_per_host is not None:
            for index in range(serving.replicas_per_host):
                taken.setdefault(serving.replica_base_port + index, f"the port of replica {index}")
        else:
            taken.setdefault(serving.replica_base_port, "the port of replica 0")
        taken.setdefault(serving.rendezvous_port, "serving.rendezvous_port")
        taken.setdefault(serving.node_status_port, "serving.node_status_port")
        for name in ("scrape_port", "prometheus_port"):
            port = getattr(monitoring, name)
            if port in taken:
                raise ValueError(f"monitoring.{name} {port} is also {taken[port]}; move one of them")
            taken[port] = f"monitoring.{name}"
        return self

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in profile_names():
            raise ValueError(f"unknown stack profile {_shown(value)}; choose one of {', '.join(profile_names())}")
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
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise UserError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; a deployment "
                            "config is a few lines: check that --config names the right file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UserError(
            f"config file {path} not found; pass --config FILE or create {CONFIG_FILENAME} beside "
            "the inventory (inventory/fm9g.yml is an example)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {_first_line(str(exc))}") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = CONFIG_FILENAME) -> DeploymentConfig:
    data = load_user_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a mapping of sections (model, profile, serving, mirror)")
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        message = describe_validation_error(exc)
    except (ValueError, OverflowError, RecursionError) as exc:
        # A value pydantic's own checks could not even compare (no such value should reach here).
        message = f"a value cannot be used ({_first_line(str(exc))[:120]}); see inventory/fm9g.yml for an example"
    raise UserError(f"{source}: {_scrub_secrets(message, data)}")


# -- the YAML the operator writes ----------------------------------------------------------------

class _Refused(yaml.YAMLError):
    """YAML that parses but is refused (a duplicate key, an alias, too deep); the message says why."""


class StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses what would silently lose or multiply input: a key given twice (the
    later one would win), aliases (*name: a few lines can expand to gigabytes) and deep nesting."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: aliases (*{event.anchor[:40]}) are "
                           "not allowed here; write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise _Refused(f"line {mark.line + 1}: nested more than {MAX_NESTING} levels deep; "
                               "see inventory/fm9g.yml for the expected shape")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    given = key in seen
                except TypeError:
                    continue  # an unhashable key: SafeLoader refuses it itself
                if given:
                    raise _Refused(f"line {line}: key {_shown(key, 60)} is given again (first at line "
                                   f"{seen[key]}); keep one of them")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_user_yaml(text: str, source: str) -> Any:
    """Parse YAML the operator wrote with StrictYamlLoader; every mistake is a one-line UserError."""
    try:
        return yaml.load(text, Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise UserError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or _first_line(str(exc))
        raise UserError(f"{source}: not valid YAML{where}: {problem}; fix the syntax there") from None
    except (ValueError, OverflowError) as exc:
        # A scalar YAML resolves but Python cannot build: an integer of thousands of digits, a
        # timestamp like 2024-13-45.
        # (Python's own advice for the first, set_int_max_str_digits, is not the operator's fix.)
        raise UserError(f"{source}: a value cannot be read ({_first_line(str(exc)).split(';')[0][:120]}); "
                        "write a plain number or quote the value") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply; see inventory/fm9g.yml for the expected shape") from None


# -- messages --------------------------------------------------------------------------------------

def describe_validation_error(exc: ValidationError) -> str:
    """The first error of ``exc`` as 'field: problem; fix', plus how many more there are."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    # An unknown key is named as written, so as long as it was written: shorten it.
    parts = [str(part) for part in first["loc"]]
    field = ".".join(part if len(part) <= 60 else part[:57] + "..." for part in parts)
    field = field or "(top level)"
    message = _explain(first, hide_input=_holds_secret(field))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{field}: {message}{more}"


def _holds_secret(field: str) -> bool:
    """Whether the input at ``field`` is, or may contain, a secret field's value."""
    if field == "(top level)":
        return True
    return any(secret == field or secret.startswith(field + ".") for secret in SECRET_FIELDS)


def _explain(error: dict[str, Any], hide_input: bool = False) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = f"{_kind(error.get('input'))}, not shown" if hide_input else _shown(error.get("input"))
    if kind == "extra_forbidden":
        return f"unknown key; remove it or check its spelling ({_valid_keys(error['loc'])})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        limit = next(iter(ctx.values()))
        return f"must be {bound} {limit} (got {got}); set a value in range"
    if kind == "finite_number":
        return f"must be a finite number (got {got}); set a value in range"
    if kind == "literal_error":
        return f"got {got}; use {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"{got} is not of the expected form; see inventory/fm9g.yml for an example"
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters; shorten it"
    if kind == "missing":
        return "is required; add it"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float":
        return f"{error['msg'].lower()} (got {got}); change the value's type"
    return f"{error['msg']}; see inventory/fm9g.yml for an example"


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 60, 60, 30, 2
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


def _shown(value: Any, limit: int = 80) -> str:
    """``value`` as a message may quote it: repr, shortened; never fails (a huge number, deep lists)."""
    try:
        text = repr(value[: limit + 1]) if isinstance(value, str) else _REPR.repr(value)
    except (ValueError, RecursionError):  # an int too long for str(), a structure too deep
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """What ``value`` is, in words, for fields whose value a message must not quote."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else "a value"


def _scrub_secrets(message: str, data: Any) -> str:
    """``message`` with the config's api_key value masked, wherever a check may have quoted it."""
    serving = data.get("serving") if isinstance(data, dict) else None
    key = serving.get("api_key") if isinstance(serving, dict) else None
    if isinstance(key, str):
        # Short fragments would mask ordinary words; those keys never reach a message anyway.
        for fragment in {key, key.strip()}:
            if len(fragment) >= 6:
                message = message.replace(fragment, "********")
    return message


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
