"""The capacity planner: per host, how to serve the model on the GPUs it has.

For each host it chooses the tensor-parallel size (TP), the replicas (which never share a GPU),
each replica's GPUs and port, gpu_memory_utilization and max_model_len, so that on every GPU

    weights / TP  +  KV cache of one full-length sequence / TP  +  runtime reserve
        <=  gpu_memory_utilization * GPU memory

(vLLM refuses to start unless the KV cache holds one max_model_len sequence). The smallest TP
that fits wins, which gives the most replicas. Every choice can be overridden in the config's
`serving` section; an override that cannot work is refused with UserError before anything runs.
Hosts without a GPU get the CPU plan: TP 1, no GPUs, `replicas_per_host` replicas (default 1).

A GPU nvidia-smi gives no memory size for is left out (a note says so); a host with mixed GPU
models is planned for its smallest GPU (a note names each model); a host with a GPU in MIG mode is
refused (see _mig_problem).

One replica over several hosts: when no host of the fleet holds the model alone (not even with a
shortened context) and the profile says how its vLLM spans hosts (Profile.multi_host), the plan is
ONE replica over the fewest hosts with identical GPUs (count, model and memory; inventory order)
that hold it, in DeploymentPlan.multi_host_replicas; those hosts get no replica of their own.

  "pipeline": TP over the GPUs of each host, PP = the number of hosts (one stage per host). Each
              GPU holds its stage's share: ceil(layers / PP) layers / TP, plus one vocab x hidden
              matrix / TP (the first stage holds the embedding, the last the lm_head; the planner
              counts the heaviest stage), and the KV cache of those layers only.
  "tensor":   TP over every GPU of the hosts, PP 1: the single-host formula at that TP.

A profile that pipelines plans "tensor" for a model upstream vLLM serves as a class that cannot
pipeline (architecture.NO_PIPELINE_PARALLEL: MiniCPM, so every FM9G model), saying why (span_mode).

Without multi_host the model is refused as before, the message saying which profiles can span.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fm9g_deploy.catalog import ModelSpec, get_model
from fm9g_deploy.config import DeploymentConfig, ServingConfig
from fm9g_deploy.errors import UserError
from fm9g_deploy.gpu import NOT_SUPPORTED, GpuInfo, HostGpuFacts, cuda_support_problem
from fm9g_deploy.profiles import Profile, load_profile, profile_names

MIB = 1024**2
GIB = 1024**3

#: The guide's --gpu-memory-utilization: vLLM may use this share of each GPU's memory.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
#: Per GPU, beyond weights and KV cache: CUDA context, NCCL buffers, CUDA graphs and the
#: activations of vLLM's profiling run. A fixed, deliberately generous allowance.
RUNTIME_RESERVE_BYTES = 3 * GIB
#: When the full context does not fit, the planner shortens max_model_len, but not below this.
MIN_REDUCED_MAX_MODEL_LEN = 2048

#: Nominal memory of GPUs `plan --gpus COUNTxNAME` knows (MiB). Real cards report a little less
#: (an H100 80GB HBM3 reports 81559 MiB); `plan -i` uses what nvidia-smi reports.
KNOWN_GPUS_MIB = {
    "T4": 16 * 1024,
    "V100-16GB": 16 * 1024,
    "V100-32GB": 32 * 1024,
    "A10": 24 * 1024,
    "L4": 24 * 1024,
    "A30": 24 * 1024,
    "RTX3090": 24 * 1024,
    "RTX4090": 24 * 1024,
    "A100-40GB": 40 * 1024,
    "A40": 48 * 1024,
    "L40": 48 * 1024,
    "L40S": 48 * 1024,
    "A100-80GB": 80 * 1024,
    "A800-80GB": 80 * 1024,
    "H100": 80 * 1024,
    "H100-80GB": 80 * 1024,
    "H800": 80 * 1024,
    "H200": 141 * 1024,
}


@dataclass
class ReplicaPlan:
    """One vLLM server: its GPUs (CUDA_VISIBLE_DEVICES, nvidia-smi indices) and settings."""

    index: int
    port: int
    tensor_parallel_size: int
    gpus: list[int]
    gpu_memory_utilization: float | None
    max_model_len: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GpuMemoryPlan:
    """How one GPU's memory is spent by a replica (bytes)."""

    total: int
    budget: int  # gpu_memory_utilization * total: what vLLM may use
    weights: int
    kv_cache_one_sequence: int  # KV cache of one max_model_len sequence
    reserve: int

    @property
    def headroom(self) -> int:
        """Budget left after one full-length sequence: KV cache for more concurrent requests."""
        return self.budget - self.weights - self.kv_cache_one_sequence - self.reserve

    @property
    def full_length_sequences(self) -> int:
        """How many max_model_len sequences the KV cache holds at once."""
        return (self.budget - self.weights - self.reserve) // self.kv_cache_one_sequence

    def to_dict(self) -> dict[str, Any]:
        gib = {name: round(value / GIB, 2) for name, value in asdict(self).items()}
        return {**{f"{name}_gib": value for name, value in gib.items()},
                "headroom_gib": round(self.headroom / GIB, 2),
                "full_length_sequences": self.full_length_sequences}


@dataclass
class HostPlan:
    host: str
    accelerator: str  # "cuda" or "cpu"
    tensor_parallel_size: int
    replicas: list[ReplicaPlan]
    #: Every GPU nvidia-smi lists, usable or not (verify compares it with nvidia-smi on the host).
    gpu_count: int = 0
    #: The GPU model, or "mixed: 2 x A + 2 x B" where models differ (gpu_models has each).
    gpu_name: str | None = None
    #: Each GPU model on the host: {"name", "gpus": [indexes], "memory_mib": its smallest}.
    gpu_models: list[dict[str, Any]] = field(default_factory=list)
    #: The smallest GPU's memory on the host (the one the plan is sized for).
    gpu_memory_mib: int | None = None
    cuda_driver_version: str | None = None
    memory_per_gpu: GpuMemoryPlan | None = None
    #: Why the plan is what it is, where that is not obvious (reduced context, idle GPUs, ...).
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "accelerator": self.accelerator,
            "gpu_count": self.gpu_count,
            "gpu_name": self.gpu_name,
            "gpu_models": [dict(model) for model in self.gpu_models],
            "gpu_memory_mib": self.gpu_memory_mib,
            "cuda_driver_version": self.cuda_driver_version,
            "tensor_parallel_size": self.tensor_parallel_size,
            "replicas": [replica.to_dict() for replica in self.replicas],
            "memory_per_gpu": self.memory_per_gpu.to_dict() if self.memory_per_gpu else None,
            "notes": list(self.notes),
        }


@dataclass
class MultiHostReplicaPlan:
    """One vLLM server over several hosts (a Ray cluster): the head (hosts[0]) serves the API on
    ``port``; every host gives it ``gpus_per_host`` GPUs."""

    hosts: list[str]
    #: The profile's multi_host: "pipeline" (PP across hosts) or "tensor" (TP across hosts).
    parallelism: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpus_per_host: int
    #: Each host's GPUs in the replica (nvidia-smi indices); none on CPU hosts.
    gpus: dict[str, list[int]]
    gpu_memory_utilization: float | None
    max_model_len: int
    port: int
    #: None on CPU hosts.
    memory_per_gpu: GpuMemoryPlan | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hosts": list(self.hosts),
            "head": self.hosts[0],
            "parallelism": self.parallelism,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "gpus_per_host": self.gpus_per_host,
            "gpus": {host: list(gpus) for host, gpus in self.gpus.items()},
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "port": self.port,
            "memory_per_gpu": self.memory_per_gpu.to_dict() if self.memory_per_gpu else None,
            "notes": list(self.notes),
        }


@dataclass
class DeploymentPlan:
    model: str
    profile: str
    hosts: dict[str, HostPlan]
    #: Replicas that span hosts (their hosts' own replica lists are empty); at most one today.
    multi_host_replicas: list[MultiHostReplicaPlan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "profile": self.profile,
                "hosts": {name: plan.to_dict() for name, plan in self.hosts.items()},
                "multi_host_replicas": [replica.to_dict() for replica in self.multi_host_replicas]}


def refuse_multi_host(plan: DeploymentPlan, command: str) -> None:
    """UserError where the plan has a replica over several hosts that ``command`` (deploy, verify)
    cannot serve or check: one on a Ray cluster (the cuda121 profile's fork) is not built yet; vLLM's
    own multi-node launcher (the cpu and cuda130 profiles) is."""
    if not plan.multi_host_replicas or load_profile(plan.profile).multi_host_launcher != "ray":
        return
    replica = plan.multi_host_replicas[0]
    raise UserError(
        f"{command}: the plan spans hosts: one {plan.model} replica over {', '.join(replica.hosts)} "
        f"(TP {replica.tensor_parallel_size} x PP {replica.pipeline_parallel_size}) on a Ray cluster, which "
        f"profile {plan.profile} needs and fm9g-deploy does not run yet; use hosts that each fit the model, or "
        "a profile with vLLM's own multi-node launcher (cuda130), or run `fm9g-deploy plan` to see the layout"
    )


# -- entry points -----------------------------------------------------------------------------

def plan_deployment(
    config: DeploymentConfig, facts: dict[str, HostGpuFacts], *, check_driver: bool = True
) -> DeploymentPlan:
    """Plan every host in ``facts``; UserError for the first host that cannot work.

    A host too small for one replica is not an error at once: where no host holds the model and
    the profile spans hosts, one replica over several of them is planned (_plan_multi_host).
    ``facts`` is in inventory order (the order hosts are taken for a replica over several); the
    plan lists hosts by name. ``check_driver=False`` skips the driver's CUDA check (hypothetical
    hosts have no driver).
    """
    if not facts:
        raise UserError("no hosts to plan; check the inventory (and --limit)")
    model = get_model(config.model.name)
    profile = load_profile(config.profile)
    hosts: dict[str, HostPlan] = {}
    too_small: dict[str, _HostTooSmall] = {}
    for host, host_facts in sorted(facts.items()):
        try:
            hosts[host] = plan_host(host, host_facts, model, profile, config.serving, check_driver=check_driver)
        except _HostTooSmall as exc:
            too_small[host] = exc
    multi_host: list[MultiHostReplicaPlan] = []
    if config.serving.hosts_per_replica:
        replica, host_plans = _plan_cpu_span(model, profile, config.serving, list(facts), hosts)
        hosts.update(host_plans)
        multi_host.append(replica)
    if too_small:
        first = too_small[min(too_small)]
        if not profile.multi_host:
            raise UserError(f"{first}; {_no_multi_host_hint(profile)}")
        if hosts:
            raise UserError(f"{first}; one replica spans hosts only where no host holds {model.name} alone "
                            f"(host {min(hosts)} does): leave host {first.shape.host} out, or give it more GPUs")
        order = [host for host in facts if host in too_small]
        replica, host_plans = _plan_multi_host(model, profile, config.serving, [too_small[h] for h in order])
        hosts.update(host_plans)
        multi_host.append(replica)
    return DeploymentPlan(model=model.name, profile=profile.name, hosts=dict(sorted(hosts.items())),
                          multi_host_replicas=multi_host)


def span_mode(model: ModelSpec, profile: Profile) -> tuple[str, str | None]:
    """How one replica of ``model`` spans hosts under ``profile`` ("pipeline" or "tensor"), and why it is
    tensor where the profile would pipeline: the class upstream vLLM serves the model as may not pipeline."""
    from fm9g_deploy.architecture import NO_PIPELINE_PARALLEL

    mode = profile.multi_host
    if mode == "pipeline" and profile.architecture_mapping == "upstream":
        why = NO_PIPELINE_PARALLEL.get(model.upstream_architecture or "")
        if why:
            return "tensor", (f"tensor parallel across the hosts, not pipeline parallel: {model.name} is served as "
                              f"{model.upstream_architecture}, and {why}")
    return mode, None


def launcher_text(profile: Profile) -> str:
    """What starts a replica over hosts under ``profile``, in a plan's words."""
    if profile.multi_host_launcher == "ray":
        return "vLLM runs it on a Ray cluster of the hosts (the head's server with the Ray executor)"
    return ("vLLM's own multi-node launcher runs it: the head's server is node rank 0, every other host runs a "
            "headless worker that joins it")


def _no_multi_host_hint(profile: Profile) -> str:
    spanning = [name for name in profile_names()
                if load_profile(name).multi_host and load_profile(name).accelerator == profile.accelerator]
    can = (f" (profile {' or '.join(spanning)} can run one replica over several hosts)" if spanning else "")
    return f"profile {profile.name} cannot span hosts{can}"


def plan_host(
    host: str,
    facts: HostGpuFacts,
    model: ModelSpec,
    profile: Profile,
    serving: ServingConfig,
    *,
    check_driver: bool = True,
) -> HostPlan:
    if facts.gpu_count == 0:
        if profile.accelerator != "cpu":
            why = f" ({facts.problem})" if facts.problem else ""
            raise UserError(
                f"host {host} has no usable NVIDIA GPU{why} but profile {profile.name} needs one; "
                "set `profile: cpu` in the config to serve on the CPU, or fix the host's GPU driver"
            )
        return _plan_cpu_host(host, model, serving)
    if profile.accelerator == "cpu":
        gpu_profiles = [name for name in profile_names() if load_profile(name).accelerator == "cuda"]
        raise UserError(
            f"host {host} has {facts.gpu_count} NVIDIA GPU(s) but the profile is {profile.name}; "
            f"set `profile: {' or '.join(gpu_profiles)}` in the config to serve on them"
        )
    if check_driver and profile.cuda_version:
        problem = cuda_support_problem(facts.cuda_driver_version, profile.cuda_version)
        if problem:
            raise UserError(f"host {host}: {problem} (profile {profile.name})")
    mig = _mig_problem(host, facts.gpus)
    if mig:
        raise UserError(mig)
    return _plan_gpu_host(host, facts, model, serving)


def _mig_problem(host: str, gpus: list[GpuInfo]) -> str | None:
    """Why a host with a GPU in MIG mode (or one whose MIG mode nvidia-smi could not read) cannot
    be planned, or None.

    The plan gives each replica whole GPUs by nvidia-smi index (CUDA_VISIBLE_DEVICES=0,1 with
    CUDA_DEVICE_ORDER=PCI_BUS_ID). CUDA cannot use a MIG-enabled GPU whole: it shows its MIG
    instances instead, which CUDA_VISIBLE_DEVICES names by MIG UUID, and its numbering of the
    host's other GPUs may then differ from nvidia-smi's. Planning around the MIG GPU by index is
    therefore not known to be right either, so the host is refused rather than half-planned."""
    enabled = [gpu for gpu in gpus if gpu.mig_enabled]
    if enabled:
        which = ", ".join(f"{gpu.index} ({gpu.name or 'unknown model'})" for gpu in enabled)
        fix = " and ".join(f"`sudo nvidia-smi -i {gpu.index} -mig 0`" for gpu in enabled)
        return (f"host {host}: MIG mode is enabled on GPU {which}; replicas are planned on whole GPUs by "
                f"index, which CUDA does not offer on a MIG-enabled GPU (its instances need their MIG device "
                f"UUIDs); disable MIG with {fix} (a GPU reset or reboot may be needed), or leave the host out of the inventory")
    unknown = [gpu for gpu in gpus if gpu.mig_mode is None
               and gpu.unreported.get("mig.mode.current", NOT_SUPPORTED[0]) not in NOT_SUPPORTED]
    if unknown:
        which = ", ".join(f"{gpu.index} ({gpu.unreported['mig.mode.current']})" for gpu in unknown)
        return (f"host {host}: nvidia-smi could not read the MIG mode of GPU {which}, so a plan by GPU index "
                f"may be wrong there; check the GPU with `nvidia-smi -q -i {unknown[0].index}` and plan again")
    return None


# -- GPU hosts ----------------------------------------------------------------------------------

@dataclass
class _Sizing:
    """The memory arithmetic for one model on GPUs of one size at one utilization."""

    model: ModelSpec
    gpu_total: int
    utilization: float

    @property
    def budget(self) -> int:
        return int(self.gpu_total * self.utilization)

    def memory(self, tp: int, max_model_len: int, pp: int = 1) -> GpuMemoryPlan:
        """One GPU's memory at TP ``tp`` (and PP ``pp``: a GPU of the heaviest stage)."""
        return GpuMemoryPlan(
            total=self.gpu_total,
            budget=self.budget,
            weights=self.model.stage_weight_bytes_per_gpu(tp, pp),
            kv_cache_one_sequence=self.model.stage_kv_cache_bytes_per_token_per_gpu(tp, pp) * max_model_len,
            reserve=RUNTIME_RESERVE_BYTES,
        )

    def fits(self, tp: int, max_model_len: int, pp: int = 1) -> bool:
        return self.memory(tp, max_model_len, pp).headroom >= 0

    def longest_len(self, tp: int, cap: int, pp: int = 1) -> int:
        """The longest power-of-two max_model_len (at most ``cap``) that fits at ``tp`` (and
        ``pp``); 0 if none."""
        room = self.budget - self.model.stage_weight_bytes_per_gpu(tp, pp) - RUNTIME_RESERVE_BYTES
        tokens = room // self.model.stage_kv_cache_bytes_per_token_per_gpu(tp, pp)
        if tokens >= cap:
            return cap
        return 1 << (int(tokens).bit_length() - 1) if tokens >= 1 else 0

    def gpus_needed(self, max_model_len: int) -> int | None:
        """The fewest GPUs of this size one replica needs (a valid TP), or None if no TP fits."""
        return next((tp for tp in self.model.tensor_parallel_sizes() if self.fits(tp, max_model_len)), None)


def _unusable(gpu: GpuInfo) -> str | None:
    """Why the planner cannot put a replica on ``gpu``, or None."""
    if gpu.memory_total_mib is None:
        said = gpu.unreported.get("memory.total", "no value")
        return f"nvidia-smi gives no memory.total for it ({said}), so its size is unknown"
    return None


def _gpu_models(gpus: list[GpuInfo]) -> list[dict[str, Any]]:
    """Each model among ``gpus`` (in index order of first appearance), its GPUs and smallest memory."""
    models: dict[str, list[GpuInfo]] = {}
    for gpu in gpus:
        models.setdefault(gpu.name or "unknown model", []).append(gpu)
    return [{"name": name, "gpus": [gpu.index for gpu in same],
             "memory_mib": min((gpu.memory_total_mib for gpu in same if gpu.memory_total_mib is not None),
                               default=None)}
            for name, same in models.items()]


@dataclass
class _HostShape:
    """One GPU host as the planner sizes it: its usable GPUs, their smallest memory, its notes."""

    host: str
    listed: list[GpuInfo]  # every GPU nvidia-smi lists
    gpus: list[GpuInfo]  # the usable ones, by index
    smallest: int  # MiB
    label: str
    models: list[dict[str, Any]]
    utilization: float
    sizing: _Sizing
    wanted_len: int
    where: str  # "host h (4 x 80 GiB A100-80GB)", for messages
    cuda_driver_version: str | None
    notes: list[str]

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def kind(self) -> tuple[str, int, int]:
        """Hosts of one kind can share a replica: same GPU model, usable count and memory."""
        return (self.label, self.count, self.smallest)

    @property
    def description(self) -> str:
        return f"{self.count} x {_gib(self.smallest)} {self.label}"


class _HostTooSmall(UserError):
    """One replica of the model needs more GPUs of this size than the host has (or no TP fits)."""

    def __init__(self, message: str, shape: _HostShape) -> None:
        super().__init__(message)
        self.shape = shape


def _host_shape(host: str, facts: HostGpuFacts, model: ModelSpec, serving: ServingConfig) -> _HostShape:
    listed = sorted(facts.gpus, key=lambda gpu: gpu.index)
    notes: list[str] = []
    unusable = {gpu.index: _unusable(gpu) for gpu in listed if _unusable(gpu)}
    gpus = [gpu for gpu in listed if gpu.index not in unusable]
    for index, why in unusable.items():
        notes.append(f"GPU {index} left out of the plan: {why}; check it with `nvidia-smi -q -i {index}`")
    if not gpus:
        raise UserError(f"host {host} has {len(listed)} NVIDIA GPU(s) but none the planner can use: "
                        + "; ".join(f"GPU {index}: {why}" for index, why in unusable.items())
                        + "; check them with `nvidia-smi -q`, or set `profile: cpu` to serve on the CPU")
    count = len(gpus)
    smallest = min(gpu.memory_total_mib for gpu in gpus)
    utilization = serving.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    sizing = _Sizing(model, smallest * MIB, utilization)
    models = _gpu_models(listed)
    if len(models) > 1:
        # One name would misreport the host: name each model, size every replica for the smallest GPU.
        label = "mixed: " + " + ".join(f"{len(m['gpus'])} x {m['name']}" for m in models)
        notes.append("mixed GPU models: " + "; ".join(
            f"GPU {', '.join(map(str, m['gpus']))}: {m['name']} "
            f"({_gib(m['memory_mib']) if m['memory_mib'] is not None else 'size unknown'})" for m in models)
            + f"; every replica is planned for the smallest usable GPU ({_gib(smallest)})")
    else:
        label = models[0]["name"]
        if len({gpu.memory_total_mib for gpu in gpus}) > 1:
            notes.append(f"GPUs differ in memory; planned for the smallest ({_gib(smallest)})")
    wanted_len = _wanted_max_model_len(model, serving, notes)
    usable = f", {len(unusable)} more unusable" if unusable else ""
    where = f"host {host} ({count} x {_gib(smallest)} {label}{usable})"  # e.g. "(4 x 80 GiB A100-80GB)"
    return _HostShape(host=host, listed=listed, gpus=gpus, smallest=smallest, label=label, models=models,
                      utilization=utilization, sizing=sizing, wanted_len=wanted_len, where=where,
                      cuda_driver_version=facts.cuda_driver_version, notes=notes)


def _too_small(shape: _HostShape, serving: ServingConfig) -> bool:
    """Whether more GPUs of this size (more hosts) are what one replica lacks, rather than a
    setting: _does_not_fit's last two cases."""
    needed = shape.sizing.gpus_needed(shape.wanted_len)
    return needed is None or needed > shape.count


def _plan_gpu_host(host: str, facts: HostGpuFacts, model: ModelSpec, serving: ServingConfig) -> HostPlan:
    shape = _host_shape(host, facts, model, serving)
    gpus, notes, sizing, count = shape.gpus, list(shape.notes), shape.sizing, shape.count
    wanted_len, where, utilization = shape.wanted_len, shape.where, shape.utilization

    def refuse(tried_tp: int) -> UserError:
        message = _does_not_fit(model, sizing, serving, count, wanted_len, where, tried_tp)
        return _HostTooSmall(message, shape) if _too_small(shape, serving) else UserError(message)

    candidates = _tp_candidates(model, serving, count, where)
    fitting = [tp for tp in candidates if sizing.fits(tp, wanted_len)]
    if fitting:
        tp, max_model_len = min(fitting), wanted_len
    elif serving.max_model_len is None and candidates:
        # Nothing fits the full context: use the widest TP the host allows, shorten the context.
        tp = max(candidates)
        max_model_len = sizing.longest_len(tp, wanted_len)
        if max_model_len < min(MIN_REDUCED_MAX_MODEL_LEN, wanted_len):
            raise refuse(tp)
        notes.append(
            f"max_model_len reduced from {wanted_len} to {max_model_len} so one full-length sequence's "
            f"KV cache fits; {_gpus_for_full_context(sizing, wanted_len)}"
        )
    else:
        raise refuse(max(candidates) if candidates else 1)

    replica_count = serving.replicas_per_host or count // tp
    _check_ports(serving, replica_count, host)
    replicas = [
        ReplicaPlan(
            index=i,
            port=serving.replica_base_port + i,
            tensor_parallel_size=tp,
            gpus=[gpu.index for gpu in gpus[i * tp:(i + 1) * tp]],
            gpu_memory_utilization=utilization,
            max_model_len=max_model_len,
        )
        for i in range(replica_count)
    ]
    idle = [gpu.index for gpu in gpus[replica_count * tp:]]
    if idle:
        notes.append(f"GPU(s) {', '.join(map(str, idle))} unused ({count} GPUs, {replica_count} replica(s) of TP {tp})")
    notes.extend(_busy_gpu_notes(gpus, utilization))
    return _gpu_host_plan(shape, tp, replicas, sizing.memory(tp, max_model_len), notes)


def _tp_candidates(model: ModelSpec, serving: ServingConfig, count: int, where: str) -> list[int]:
    """TP sizes allowed on this host, after checking the TP and replica overrides."""
    valid = model.tensor_parallel_sizes()
    tp = serving.tensor_parallel_size
    replicas = serving.replicas_per_host
    if tp is not None:
        if tp not in valid:
            raise UserError(
                f"serving.tensor_parallel_size {tp} cannot shard {model.name} ({model.num_attention_heads} "
                f"attention heads, {model.num_kv_heads} KV heads, MLP width {model.intermediate_size}); "
                f"use one of {', '.join(map(str, valid))}"
            )
        if tp > count:
            raise UserError(f"serving.tensor_parallel_size {tp} needs {tp} GPUs but {where} has {count}; "
                            f"lower it or remove it to let the planner choose")
        if replicas is not None and replicas * tp > count:
            raise UserError(
                f"serving.replicas_per_host {replicas} x tensor_parallel_size {tp} needs {replicas * tp} GPUs "
                f"(replicas never share a GPU) but {where} has {count}; lower one of them"
            )
        return [tp]
    if replicas is not None and replicas > count:
        raise UserError(f"serving.replicas_per_host {replicas} needs at least {replicas} GPUs (replicas never "
                        f"share a GPU) but {where} has {count}; lower it or remove it")
    per_replica = count // (replicas or 1)
    return [tp for tp in valid if tp <= per_replica]


def _wanted_max_model_len(model: ModelSpec, serving: ServingConfig, notes: list[str]) -> int:
    if serving.max_model_len is None:
        return model.max_model_len
    if serving.max_model_len > model.max_model_len:
        notes.append(f"serving.max_model_len {serving.max_model_len} is above {model.name}'s maximum; "
                     f"using {model.max_model_len}")
        return model.max_model_len
    return serving.max_model_len


def _does_not_fit(model: ModelSpec, sizing: _Sizing, serving: ServingConfig, count: int,
                  wanted_len: int, where: str, tried_tp: int) -> str:
    """The UserError text: what fails and how many GPUs of this size it would take."""
    size = _gib(sizing.gpu_total // MIB)
    settings = f"gpu_memory_utilization {sizing.utilization:g}"
    per_gpu = sizing.memory(tried_tp, wanted_len)
    detail = (f"at TP {tried_tp} each GPU needs {_gib_bytes(per_gpu.weights)} weights + "
              f"{_gib_bytes(per_gpu.kv_cache_one_sequence)} KV cache + {_gib_bytes(per_gpu.reserve)} reserve "
              f"but may use {_gib_bytes(per_gpu.budget)}")
    needed = sizing.gpus_needed(wanted_len)
    if needed is None:
        return (f"{model.name} cannot fit on GPUs of {size} at any tensor-parallel size ({settings}, "
                f"max_model_len {wanted_len}; {detail}) on {where}; use GPUs with more memory")
    if serving.tensor_parallel_size is not None and needed <= count:
        return (f"serving.tensor_parallel_size {tried_tp} is too small for {model.name} on {where} ({detail}); "
                f"it needs {needed} GPUs of {size} for max_model_len {wanted_len} ({settings}); "
                f"set tensor_parallel_size {needed} or remove it")
    if serving.replicas_per_host is not None and needed <= count:
        return (f"serving.replicas_per_host {serving.replicas_per_host} leaves {count // serving.replicas_per_host} "
                f"GPU(s) per replica on {where}, but {model.name} needs {needed} GPUs of {size} per replica "
                f"for max_model_len {wanted_len} ({settings}); set replicas_per_host to at most "
                f"{count // needed} or remove it")
    shorter = ""
    short_len = min(MIN_REDUCED_MAX_MODEL_LEN, wanted_len)
    needed_short = sizing.gpus_needed(short_len)
    if serving.max_model_len is None and needed_short is not None and needed_short < needed:
        shorter = f" ({needed_short} with max_model_len {short_len})"
    return (f"{model.name} needs {needed} GPUs of {size}{shorter} for {wanted_len}-token sequences "
            f"({settings}) but {where} has {count}; add GPUs or use larger ones")


def _gpus_for_full_context(sizing: _Sizing, wanted_len: int) -> str:
    needed = sizing.gpus_needed(wanted_len)
    if needed is None:
        return f"the full {wanted_len} tokens need GPUs with more memory"
    return f"the full {wanted_len} tokens need {needed} GPUs of {_gib(sizing.gpu_total // MIB)}"


def _busy_gpu_notes(gpus: list[GpuInfo], utilization: float) -> list[str]:
    """vLLM wants utilization * total free when it starts; say so where memory is in use now."""
    notes = []
    for gpu in gpus:
        if gpu.memory_used_mib and gpu.memory_used_mib > (1 - utilization) * gpu.memory_total_mib:
            notes.append(f"GPU {gpu.index} has {gpu.memory_used_mib} MiB in use now; a replica needs "
                         f"{utilization:g} of its memory free when it starts")
    return notes


# -- one replica over several hosts -----------------------------------------------------------------

def _span_layout(model: ModelSpec, mode: str, serving: ServingConfig, shape: _HostShape,
                 hosts: int) -> tuple[int, int, int] | None:
    """(TP, PP, GPUs per host) of one replica over ``hosts`` hosts like ``shape``; None where the
    model cannot be split so. serving.tensor_parallel_size, when set, is the TP within each host."""
    per_host = serving.tensor_parallel_size or shape.count
    if mode == "pipeline":
        if hosts > model.num_layers:  # a stage needs a layer at least
            return None
        tp = serving.tensor_parallel_size or max(model.tensor_parallel_sizes(per_host))
        return tp, hosts, tp
    valid = set(model.tensor_parallel_sizes(per_host * hosts))
    for gpus in [per_host] if serving.tensor_parallel_size else range(per_host, 0, -1):
        if gpus * hosts in valid:
            return gpus * hosts, 1, gpus
    return None


def _most_hosts(model: ModelSpec, mode: str) -> int:
    """Beyond this many hosts no layout splits the model further (a layer per stage, or a TP that
    divides the attention heads)."""
    return model.num_layers if mode == "pipeline" else model.num_attention_heads


def _hosts_needed(model: ModelSpec, mode: str, serving: ServingConfig, shape: _HostShape, max_model_len: int,
                  limit: int) -> int | None:
    """The fewest hosts like ``shape`` (2 to ``limit``) one replica of ``max_model_len`` fits on, or None."""
    for hosts in range(2, limit + 1):
        layout = _span_layout(model, mode, serving, shape, hosts)
        if layout and shape.sizing.fits(layout[0], max_model_len, layout[1]):
            return hosts
    return None


def _widest_span(model: ModelSpec, mode: str, serving: ServingConfig, shape: _HostShape, limit: int) -> int | None:
    """The most hosts (2 to ``limit``) one replica can be laid out over, or None."""
    return next((hosts for hosts in range(limit, 1, -1) if _span_layout(model, mode, serving, shape, hosts)), None)


def _more_hosts_text(model: ModelSpec, mode: str, serving: ServingConfig, shape: _HostShape) -> str:
    """How many hosts like ``shape`` one replica would need, if any number would."""
    limit = _most_hosts(model, mode)
    needed = _hosts_needed(model, mode, serving, shape, shape.wanted_len, limit)
    if needed is None:
        bound = (f"PP cannot exceed its {model.num_layers} layers" if mode == "pipeline"
                 else f"TP must divide its {model.num_attention_heads} attention heads")
        return f"no number of such hosts would ({bound}); use GPUs with more memory"
    short_len = min(MIN_REDUCED_MAX_MODEL_LEN, shape.wanted_len)
    shorter = ""
    if serving.max_model_len is None:
        needed_short = _hosts_needed(model, mode, serving, shape, short_len, needed)
        if needed_short is not None and needed_short < needed:
            shorter = f" ({needed_short} with max_model_len {short_len})"
    return f"{needed} such hosts would hold it{shorter}"


def _plan_multi_host(model: ModelSpec, profile: Profile, serving: ServingConfig,
                     refused: list[_HostTooSmall]) -> tuple[MultiHostReplicaPlan, dict[str, HostPlan]]:
    """One replica over the fewest hosts of one kind that hold it (``refused``: every host, each too
    small alone, in inventory order), and every host's plan; UserError where the fleet cannot."""
    mode, why_tensor = span_mode(model, profile)
    shapes = [exc.shape for exc in refused]
    if len(shapes) == 1:  # nothing to span: the host's own refusal, and what spanning would take
        raise UserError(_fleet_does_not_fit(model, profile, serving, refused, [shapes]))
    if serving.replicas_per_host not in (None, 1):
        raise UserError(f"serving.replicas_per_host {serving.replicas_per_host}: {model.name} needs more GPUs than "
                        "any host has, so its one replica spans hosts; remove replicas_per_host")
    kinds: dict[tuple[str, int, int], list[_HostShape]] = {}
    for shape in shapes:
        kinds.setdefault(shape.kind, []).append(shape)
    groups = list(kinds.values())
    wanted_len = shapes[0].wanted_len
    # The full context on the fewest hosts; else, with no max_model_len set, the longest context
    # over the most hosts of a kind (not below MIN_REDUCED_MAX_MODEL_LEN), as on one host.
    best: tuple[list[_HostShape], int, int] | None = None
    for group in groups:
        hosts = _hosts_needed(model, mode, serving, group[0], wanted_len, len(group))
        if hosts is not None and (best is None or hosts < best[1]):
            best = (group, hosts, wanted_len)
    if best is None and serving.max_model_len is None:
        for group in groups:
            hosts = _widest_span(model, mode, serving, group[0], len(group))
            if hosts is None:
                continue
            tp, pp, _ = _span_layout(model, mode, serving, group[0], hosts)
            length = group[0].sizing.longest_len(tp, wanted_len, pp)
            if length >= min(MIN_REDUCED_MAX_MODEL_LEN, wanted_len) and (best is None or length > best[2]):
                best = (group, hosts, length)
    if best is None:
        raise UserError(_fleet_does_not_fit(model, profile, serving, refused, groups))

    group, count, max_model_len = best
    spanned = group[:count]
    head = spanned[0]
    names = [shape.host for shape in spanned]
    tp, pp, per_host = _span_layout(model, mode, serving, head, count)
    sizing = head.sizing
    memory = sizing.memory(tp, max_model_len, pp)
    port = serving.replica_base_port
    _check_ports(serving, 1, head.host)
    size = _gib(head.smallest)
    alone = sizing.gpus_needed(wanted_len)
    notes = [
        f"{model.name} does not fit on one host ({head.description}: "
        + (f"it needs {alone} GPUs of {size}" if alone else "no tensor-parallel size fits")
        + f" for max_model_len {wanted_len}); profile {profile.name} spans hosts ({mode} parallel), so one "
        f"replica spans {count} hosts: {', '.join(names)}; the head, {names[0]}, serves it on port {port}",
    ]
    if mode == "pipeline":
        notes.append(f"layout: tensor parallel within each host (TP {tp}), pipeline parallel across the hosts "
                     f"(PP {pp}, one stage per host in the order listed, at most {model.stage_layers(pp)} of the "
                     f"{model.num_layers} layers each); {launcher_text(profile)}")
    else:
        notes.append(f"layout: tensor parallel across the hosts (TP {tp}: {per_host} GPU(s) on each of the {count} "
                     f"hosts, PP 1); {launcher_text(profile)}")
    if why_tensor:
        notes.append(why_tensor)
    notes.append(f"per GPU: {_gib_bytes(memory.weights)} weights + {_gib_bytes(memory.kv_cache_one_sequence)} KV "
                 f"cache of one {max_model_len}-token sequence + {_gib_bytes(memory.reserve)} reserve of a "
                 f"{_gib_bytes(memory.budget)} budget (gpu_memory_utilization {head.utilization:g} x {size}); "
                 f"{memory.full_length_sequences} full-length sequence(s) fit at once")
    if pp > 1:
        notes.append(f"the heaviest stage is counted: {model.stage_layers(pp)} layers plus one vocab x hidden "
                     f"matrix ({_gib_bytes(model.embedding_bytes_per_gpu(tp))} per GPU): the first stage holds the "
                     "embedding and the last the lm_head; vLLM gives leftover layers to the middle stages")
    crossing = ("pipeline stages pass activations across the hosts' network at every step" if mode == "pipeline"
                else "tensor-parallel all-reduces cross the hosts' network in every layer at every step, far more "
                     "demanding than pipeline stages")
    notes.append(f"interconnect: {crossing}, so the hosts need a fast interconnect (InfiniBand or RoCE); "
                 "NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME must name its interface and VLLM_HOST_IP each "
                 "host's address on it")
    if max_model_len < wanted_len:
        notes.append(f"max_model_len reduced from {wanted_len} to {max_model_len} so one full-length sequence's KV "
                     f"cache fits over {count} hosts; the full {wanted_len} tokens: "
                     + _more_hosts_text(model, mode, serving, head))
    if per_host < head.count:
        notes.append(f"{head.count - per_host} GPU(s) of each host unused (TP {tp} uses {per_host} per host)")
    if profile.multi_host_launcher == "ray":
        notes.append(f"deploy does not run a Ray cluster yet: on profile {profile.name} this layout is a plan only")

    host_plans: dict[str, HostPlan] = {}
    for stage, shape in enumerate(spanned):
        used = shape.gpus[:per_host]
        role = (f"pipeline stage {stage + 1} of {pp}" if mode == "pipeline" else f"worker, node rank {stage}"
                if stage else "")
        if stage == 0:
            role = f"{role + ', ' if role else ''}the head: the API on port {port}"
        host_notes = shape.notes + [
            f"GPU(s) {', '.join(str(gpu.index) for gpu in used)} serve the replica over {', '.join(names)} "
            f"({role}); no replica of its own"] + _busy_gpu_notes(used, shape.utilization)
        host_plans[shape.host] = _gpu_host_plan(shape, tp, [], memory, host_notes)
    for shape in shapes:
        if shape.host in host_plans:
            continue
        why = (f"the replica over {', '.join(names)} needs only {count} such hosts (a plan has one replica over hosts)"
               if shape.kind == head.kind else
               f"its GPUs ({shape.description}) differ from the replica's hosts' ({head.description}), and a "
               "replica spans hosts with identical GPUs only")
        note = f"no replica: {model.name} needs more GPUs than this host has alone, and {why}"
        notes.append(f"host {shape.host} left without a replica: {why}")
        host_plans[shape.host] = _gpu_host_plan(shape, 0, [], None, shape.notes + [note])
    replica = MultiHostReplicaPlan(
        hosts=names, parallelism=mode, tensor_parallel_size=tp, pipeline_parallel_size=pp, gpus_per_host=per_host,
        gpus={shape.host: [gpu.index for gpu in shape.gpus[:per_host]] for shape in spanned},
        gpu_memory_utilization=head.utilization, max_model_len=max_model_len, port=port, memory_per_gpu=memory,
        notes=notes,
    )
    return replica, host_plans


def _gpu_host_plan(shape: _HostShape, tp: int, replicas: list[ReplicaPlan], memory: GpuMemoryPlan | None,
                   notes: list[str]) -> HostPlan:
    return HostPlan(
        host=shape.host, accelerator="cuda", tensor_parallel_size=tp, replicas=replicas,
        gpu_count=len(shape.listed), gpu_name=shape.label, gpu_models=shape.models, gpu_memory_mib=shape.smallest,
        cuda_driver_version=shape.cuda_driver_version, memory_per_gpu=memory, notes=notes,
    )


def _fleet_does_not_fit(model: ModelSpec, profile: Profile, serving: ServingConfig, refused: list[_HostTooSmall],
                        groups: list[list[_HostShape]]) -> str:
    """The UserError text where no hosts of one kind hold one replica: what fails at the most hosts
    there are of a kind, and how many would do."""
    mode, _ = span_mode(model, profile)
    group = max(groups, key=len)  # the first of the largest
    shape = group[0]
    more = _more_hosts_text(model, mode, serving, shape)
    if len(refused) == 1:
        return f"{refused[0]}; with profile {profile.name} one replica can span hosts ({mode} parallel): {more}"
    hosts = _widest_span(model, mode, serving, shape, len(group))
    if hosts is None:
        if len(group) == 1:
            kinds = ", ".join(f"{g[0].host}: {g[0].description}" for g in groups[:3])
            kinds += ", ..." if len(groups) > 3 else ""
            return (f"{model.name} does not fit on any one host, and no two hosts have identical GPUs to span with "
                    f"profile {profile.name} ({kinds}); of {shape.host}'s kind {more}")
        return (f"{model.name} does not fit on any one host and TP/PP cannot divide it over {len(group)} hosts of "
                f"{shape.description} (profile {profile.name}, {mode} parallel); {more}")
    tp, pp, _ = _span_layout(model, mode, serving, shape, hosts)
    per_gpu = shape.sizing.memory(tp, shape.wanted_len, pp)
    per_host = (f", serving.tensor_parallel_size {serving.tensor_parallel_size} GPU(s) per host"
                if serving.tensor_parallel_size else "")
    over = (f"all {hosts} hosts" if hosts == len(group) else
            f"{hosts} of the {len(group)} hosts (the most a valid TP x PP spans)")
    return (f"{model.name} does not fit even with one replica over {over} of {shape.description} "
            f"(profile {profile.name}, {mode} parallel, gpu_memory_utilization {shape.utilization:g}, "
            f"max_model_len {shape.wanted_len}{per_host}): at TP {tp} x PP {pp} each GPU needs "
            f"{_gib_bytes(per_gpu.weights)} weights + {_gib_bytes(per_gpu.kv_cache_one_sequence)} KV cache + "
            f"{_gib_bytes(per_gpu.reserve)} reserve but may use {_gib_bytes(per_gpu.budget)}; {more}")


# -- CPU hosts ----------------------------------------------------------------------------------

def _plan_cpu_span(model: ModelSpec, profile: Profile, serving: ServingConfig, order: list[str],
                   hosts: dict[str, HostPlan]) -> tuple[MultiHostReplicaPlan, dict[str, HostPlan]]:
    """serving.hosts_per_replica on CPU hosts: one replica over the first N of ``order`` (inventory
    order), tensor parallel across them, one rank per host; the other hosts keep their own replicas."""
    count = serving.hosts_per_replica
    setting = f"serving.hosts_per_replica {count}"
    if profile.accelerator != "cpu":
        raise UserError(f"{setting}: on GPU hosts a replica spans hosts only where no host holds {model.name} "
                        "alone, as the planner decides; remove hosts_per_replica (it is the CPU profile's "
                        "rehearsal of that layout)")
    if not profile.multi_host:
        raise UserError(f"{setting}: profile {profile.name} cannot span hosts; remove hosts_per_replica")
    if count > len(order):
        raise UserError(f"{setting}: the plan has only {len(order)} serving host(s) ({', '.join(order)}); add hosts, "
                        "lower hosts_per_replica, or drop --limit")
    if serving.replicas_per_host not in (None, 1):
        raise UserError(f"{setting} with replicas_per_host {serving.replicas_per_host}: a host in a replica over "
                        "hosts runs one rank of it and no replica of its own; remove one of them")
    if count not in model.tensor_parallel_sizes(count):
        raise UserError(f"{setting}: tensor parallel {count} cannot shard {model.name} ({model.num_attention_heads} "
                        f"attention heads, {model.num_kv_heads} KV heads); choose a size that divides them")
    names = order[:count]
    head = hosts[names[0]]
    port = serving.replica_base_port
    max_model_len = head.replicas[0].max_model_len
    notes = [
        f"{setting}: one replica over {', '.join(names)}, tensor parallel across them (TP {count}, one rank per "
        f"host, PP 1); the head, {names[0]}, serves it on port {port}",
        launcher_text(profile),
        "interconnect: tensor-parallel all-reduces cross the hosts' network in every layer at every step (gloo "
        "on CPUs); GLOO_SOCKET_IFNAME must name that network's interface and VLLM_HOST_IP each host's address "
        "on it",
        "a rehearsal on CPUs of a GPU fleet's replica over hosts: the same launch, units and checks",
    ]
    host_plans: dict[str, HostPlan] = {}
    for rank, name in enumerate(names):
        role = f"the head: the API on port {port}" if rank == 0 else f"worker, node rank {rank}"
        host_plans[name] = HostPlan(host=name, accelerator="cpu", tensor_parallel_size=count, replicas=[],
                                    notes=hosts[name].notes + [f"serves the replica over {', '.join(names)} "
                                                               f"({role}); no replica of its own"])
    replica = MultiHostReplicaPlan(
        hosts=names, parallelism="tensor", tensor_parallel_size=count, pipeline_parallel_size=1, gpus_per_host=0,
        gpus={name: [] for name in names}, gpu_memory_utilization=None, max_model_len=max_model_len, port=port,
        memory_per_gpu=None, notes=notes,
    )
    return replica, host_plans


def _plan_cpu_host(host: str, model: ModelSpec, serving: ServingConfig) -> HostPlan:
    if serving.tensor_parallel_size not in (None, 1):
        raise UserError(f"serving.tensor_parallel_size {serving.tensor_parallel_size}: host {host} has no GPU and "
                        "the CPU profile serves with tensor_parallel_size 1; remove the override")
    notes = [f"no NVIDIA GPU: CPU plan (vLLM KV cache {serving.cpu_kvcache_space_gib} GiB of host memory)"]
    if serving.gpu_memory_utilization is not None:
        notes.append("serving.gpu_memory_utilization is ignored on a host without GPUs")
    max_model_len = _wanted_max_model_len(model, serving, notes)
    kv_space = serving.cpu_kvcache_space_gib * GIB
    per_token = model.kv_cache_bytes_per_token()
    if per_token * max_model_len > kv_space:
        fitting = kv_space // per_token
        if serving.max_model_len is not None or fitting < min(MIN_REDUCED_MAX_MODEL_LEN, max_model_len):
            raise UserError(
                f"host {host}: max_model_len {max_model_len} of {model.name} needs "
                f"{_gib_bytes(per_token * max_model_len)} of KV cache but serving.cpu_kvcache_space_gib is "
                f"{serving.cpu_kvcache_space_gib}; raise cpu_kvcache_space_gib or lower max_model_len"
            )
        reduced = 1 << (int(fitting).bit_length() - 1)
        notes.append(f"max_model_len reduced from {max_model_len} to {reduced} to fit "
                     f"serving.cpu_kvcache_space_gib {serving.cpu_kvcache_space_gib}")
        max_model_len = reduced
    replica_count = serving.replicas_per_host or 1
    _check_ports(serving, replica_count, host)
    replicas = [
        ReplicaPlan(index=i, port=serving.replica_base_port + i, tensor_parallel_size=1, gpus=[],
                    gpu_memory_utilization=None, max_model_len=max_model_len)
        for i in range(replica_count)
    ]
    return HostPlan(host=host, accelerator="cpu", tensor_parallel_size=1, replicas=replicas, notes=notes)


def _check_ports(serving: ServingConfig, replica_count: int, host: str) -> None:
    last = serving.replica_base_port + replica_count - 1
    if last > 65535:
        raise UserError(f"host {host}: {replica_count} replicas from serving.replica_base_port "
                        f"{serving.replica_base_port} run past port 65535; lower replica_base_port")
    if serving.replica_base_port <= serving.port <= last:
        raise UserError(f"host {host}: replica ports {serving.replica_base_port}-{last} include the gateway's "
                        f"serving.port {serving.port}; move replica_base_port")


# -- hypothetical hosts (plan --gpus) ----------------------------------------------------------------

_GPU_SPEC = re.compile(r"^\s*(\d+)\s*[x×*]\s*(.+?)\s*$", re.IGNORECASE)
_GPU_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(GIB|GB|G)$", re.IGNORECASE)


def _gpu_key(name: str) -> str:
    key = re.sub(r"[\s_]+", "-", name.strip().upper())
    return re.sub(r"^NVIDIA-", "", key).replace("RTX-", "RTX")


def hypothetical_host(spec: str) -> HostGpuFacts:
    """Facts for `COUNTxNAME` (4xA100-80GB, 1xH100) or `COUNTxSIZE` (8x40GiB; GB counts as GiB,
    the way GPU memory is sold). UserError for anything else."""
    match = _GPU_SPEC.match(spec)
    if not match:
        raise UserError(f"--gpus {spec!r} is not COUNTxGPU; write e.g. 4xA100-80GB, 1xH100 or 8x40GiB")
    count, name = int(match.group(1)), match.group(2)
    if not 1 <= count <= 64:
        raise UserError(f"--gpus {spec!r}: the GPU count must be 1 to 64")
    size = _GPU_SIZE.match(name.replace(" ", ""))
    known = {_gpu_key(known_name): (known_name, mib) for known_name, mib in KNOWN_GPUS_MIB.items()}
    if size:
        mib = round(float(size.group(1)) * 1024)
        if mib < 1024:
            raise UserError(f"--gpus {spec!r}: a GPU needs at least 1 GiB")
        label = "GPU"
    elif _gpu_key(name) in known:
        label, mib = known[_gpu_key(name)]
    else:
        raise UserError(f"--gpus {spec!r}: unknown GPU {name!r}; use a size like 40GiB or one of "
                        f"{', '.join(KNOWN_GPUS_MIB)}")
    gpus = [GpuInfo(index=i, uuid=f"hypothetical-{i}", name=label, memory_total_mib=mib, memory_used_mib=None,
                    memory_free_mib=None, driver_version=None, pci_bus_id=None, compute_capability=None)
            for i in range(count)]
    return HostGpuFacts(gpus=gpus)


def _gib(mib: int) -> str:
    return f"{mib / 1024:.0f} GiB"


def _gib_bytes(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
