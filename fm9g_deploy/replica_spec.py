"""A replica's spec: built once here, from the config, the profile and the plan, and used as is.

The serve roles write it to the host and run it (a systemd unit's drop-in, or a container's
command), `status` and `stop` read it back from the host, `verify` checks the running process
against it, and the GPU proof starts it by hand. Nothing else builds a replica's command line.

The one value decided on the host is the dtype: the engine probe may fall back to float32 on a CPU
whose bf16 kernels fault. So the command line holds ``${FM9G_DTYPE}`` and the environment
``FM9G_DTYPE``; systemd (and the image's entry point, by the same rule) replace a word that is
exactly ``${NAME}`` by the variable's value.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from fm9g_deploy import layout

#: The word of the command line the host's dtype goes into.
DTYPE_VARIABLE = "FM9G_DTYPE"
#: vLLM binds its internal sockets (torch.distributed store, gloo and NCCL bootstrap) to the host's
#: outward address by default; a replica never spans hosts, so they stay on loopback.
LOOPBACK_ENVIRONMENT = {"VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
#: `serving.nvlink_multicast: false`: NCCL's NVLS, torch's and NVSHMEM's multicast, and vLLM's
#: all-reduce paths that use symmetric memory or multicast (torch symm-mem all-reduce, on by default
#: in vLLM 0.25; NCCL symm-mem; FlashInfer all-reduce, pinned to its non-multicast trtllm backend).
MULTICAST_OFF_ENVIRONMENT = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "VLLM_USE_NCCL_SYMM_MEM": "0",
    "VLLM_ALLREDUCE_USE_FLASHINFER": "0",
    "VLLM_FLASHINFER_ALLREDUCE_BACKEND": "trtllm",
}
BASE_ENVIRONMENT = {"HOME": layout.STATE_DIR, "PYTHONUNBUFFERED": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
#: The supervisor stops vLLM this long after the drain ends; systemd and Docker wait longer still,
#: so neither ever cuts a drain short.
SUPERVISOR_STOP_MARGIN_S = 15
STOP_MARGIN_S = 30
#: How long the engine probe gives one attempt (loading the model included).
PROBE_TIMEOUT_S = 900
_PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything about one replica that the roles, `status`, `stop` and `verify` agree on."""

    index: int
    serve_mode: str
    served_model_name: str
    port: int
    tensor_parallel_size: int
    gpus: list[int]
    gpu_memory_utilization: float | None
    max_model_len: int
    #: The systemd unit (systemd mode) or the container's name before the host's prefix.
    unit: str
    container: str
    #: The process's environment, the key excepted (a root-only file systemd or the entry point reads).
    environment: dict[str, str]
    #: The supervisor's command line, then ``--`` and vLLM's own.
    argv: list[str]
    #: ``argv`` as the unit's ExecStart= (systemd's quoting).
    exec_start: str
    #: The supervisor's state on the host's filesystem.
    state_file: str
    #: The supervisor's state as Prometheus text (the monitoring role links it into the node
    #: exporter's textfile directory), on the host's filesystem.
    textfile: str
    #: What systemd's TimeoutStopSec and `docker stop --time` wait for.
    stop_timeout_s: int
    #: Container mode: (host path, container path, read-only) of what the container mounts.
    mounts: list[list] = field(default_factory=list)
    #: A node of a replica over hosts (NodePlace.to_dict()); None for a replica of one host.
    node: dict | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["node"] is None:  # a one-host replica's spec (and its hash) as before nodes existed
            del data["node"]
        return data

    def vllm_argv(self, environment: dict[str, str] | None = None) -> list[str]:
        """vLLM's command line (after the supervisor's ``--``), placeholders filled from ``environment``."""
        return expand(self.argv[self.argv.index("--") + 1:], {**self.environment, **(environment or {})})


def expand(argv: list[str], environment: dict[str, str]) -> list[str]:
    """systemd's rule: a word that is exactly ``${NAME}`` becomes NAME's value ("" when unset)."""
    return [environment.get(match.group(1), "") if (match := _PLACEHOLDER.match(word)) else word for word in argv]


def systemd_exec_start(argv: list[str]) -> str:
    """``argv`` as one ExecStart= value: each word quoted for systemd, ``${NAME}`` words left to expand."""
    words = []
    for word in argv:
        if _PLACEHOLDER.match(word):
            words.append(word)
            continue
        escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
        words.append(escaped if re.fullmatch(r"[\w@%+=:,./-]+", word) and "%" not in word and "$" not in word
                     else f'"{escaped}"')
    return " ".join(words)


@dataclass(frozen=True)
class NodePlace:
    """Where one node of a replica over hosts stands: its rank, and the addresses the nodes meet on."""

    rank: int
    hosts: list[str]
    #: Each host's address and network interface on the hosts' network (VLLM_HOST_IP, and
    #: GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME), in the replica's host order.
    addresses: list[str]
    interface: str
    rendezvous_port: int
    status_port: int

    @property
    def head_address(self) -> str:
        return self.addresses[0]

    def status_url(self, rank: int) -> str:
        return f"http://{self.addresses[rank]}:{self.status_port}/status"

    def to_dict(self) -> dict:
        return {"rank": self.rank, "hosts": list(self.hosts), "head": self.hosts[0], "address": self.addresses[self.rank],
                "interface": self.interface, "master_addr": self.head_address,
                "rendezvous_port": self.rendezvous_port, "status_url": self.status_url(self.rank),
                "status_urls": [self.status_url(rank) for rank in range(len(self.hosts))]}


def node_environment(place: NodePlace) -> dict[str, str]:
    """A node's vLLM binds its sockets to the hosts' network, not loopback."""
    address = place.addresses[place.rank]
    return {"VLLM_HOST_IP": address, "GLOO_SOCKET_IFNAME": place.interface, "NCCL_SOCKET_IFNAME": place.interface}


def serve_settings(config, profile) -> dict:
    """What every replica of a deployment shares: the paths it runs from, the engine's options."""
    serve_mode = config.serving.serve_mode
    container = serve_mode == "container"
    return {
        "serve_mode": serve_mode,
        "python": layout.env_python(profile.env.name),
        "model_dir": layout.CONTAINER_MODEL_DIR if container else layout.model_current(config),
        "model_current": layout.model_current(config),
        "served_model_name": config.serving.served_model_name,
        "tokenizer_mode": config.serving.tokenizer_mode,
        "dtype": config.serving.dtype,
        "trust_remote_code": config.serving.trust_remote_code,
        "accelerator": profile.accelerator,
        "cpu_kvcache_space_gib": config.serving.cpu_kvcache_space_gib,
        "vllm_args": list(profile.vllm_args),
        "drain_flag": profile.vllm_drain_flag or "",
        "drain_timeout_s": config.serving.drain_timeout_s,
        "crash_limit": config.serving.crash_limit,
        "crash_window_s": config.serving.crash_window_s,
        "nvlink_multicast": config.serving.nvlink_multicast,
        "multicast_off_args": list(profile.vllm_multicast_off_args),
    }


def multicast_off(settings: dict) -> bool:
    """Whether replicas run with every NVLink multicast path off (GPU profiles only)."""
    return settings["accelerator"] == "cuda" and not settings["nvlink_multicast"]


def engine_args(settings: dict) -> list[str]:
    """The profile's own vLLM arguments, with its drain flag set to the deployment's drain."""
    drain = [settings["drain_flag"], str(settings["drain_timeout_s"])] if settings["drain_flag"] else []
    multicast = settings["multicast_off_args"] if multicast_off(settings) else []
    return list(settings["vllm_args"]) + drain + multicast


def build_replica_spec(settings: dict, replica: dict, *, extra_env: dict[str, str] | None = None,
                       node: NodePlace | None = None) -> ReplicaSpec:
    """One planned replica (the planner's ReplicaPlan as a dict) as it runs; with ``node``, that
    node of a replica over hosts (build_node_specs)."""
    index, port = int(replica["index"]), int(replica["port"])
    container = settings["serve_mode"] == "container"
    # A CPU profile's replica holds no GPU, whatever the plan saw on the host.
    gpus = [int(gpu) for gpu in replica.get("gpus") or []] if settings["accelerator"] == "cuda" else []
    utilization = replica.get("gpu_memory_utilization")
    headless = node is not None and node.rank > 0
    environment = {
        **BASE_ENVIRONMENT,
        **(node_environment(node) if node else LOOPBACK_ENVIRONMENT),
        "FM9G_PORT": str(port),
        DTYPE_VARIABLE: settings["dtype"],
        "FM9G_REPLICA_INDEX": str(index),
        "FM9G_TENSOR_PARALLEL_SIZE": str(replica["tensor_parallel_size"]),
        "FM9G_MAX_MODEL_LEN": str(replica["max_model_len"]),
        "FM9G_GPU_MEMORY_UTILIZATION": str(utilization or 0.9),
    }
    if settings["accelerator"] == "cuda":
        # In a container Docker's --gpus hands it exactly its GPUs, numbered from 0.
        if not container:
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus)
    else:
        environment["VLLM_CPU_KVCACHE_SPACE"] = str(settings["cpu_kvcache_space_gib"])
    if multicast_off(settings):
        environment.update(MULTICAST_OFF_ENVIRONMENT)
    environment.update({name: str(value) for name, value in (extra_env or {}).items()})

    state_file = layout.supervisor_state_file(settings["serve_mode"], index)
    in_process_state = (f"{layout.CONTAINER_STATE_DIR}/{state_file.rsplit('/', 1)[1]}" if container else state_file)
    textfile = layout.supervisor_textfile(settings["serve_mode"], index)
    in_process_textfile = f"{layout.CONTAINER_STATE_DIR}/{textfile.rsplit('/', 1)[1]}" if container else textfile
    python = settings["python"]
    supervisor = [python, layout.SUPERVISOR, "--state-file", in_process_state,
                  "--textfile", in_process_textfile, "--replica", str(index)]
    supervisor += [] if headless else ["--port", str(port)]
    supervisor += ["--crash-limit", str(settings["crash_limit"]), "--crash-window", str(settings["crash_window_s"]),
                   "--stop-timeout", str(int(settings["drain_timeout_s"]) + SUPERVISOR_STOP_MARGIN_S)]
    if node:
        supervisor += ["--node-rank", str(node.rank),
                       "--status-listen", f"{node.addresses[node.rank]}:{node.status_port}"]
        supervisor += (["--head", node.status_url(0)] if headless else
                       [arg for rank in range(1, len(node.hosts)) for arg in ("--peer", node.status_url(rank))])
    if container:
        # A container whose supervisor gave up exits 0, so Docker's on-failure policy leaves it down.
        supervisor += ["--give-up-exit-code", "0"]
    vllm = ([python, layout.VLLM_WORKER] if headless else
            [python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port)])
    vllm += ["--model", settings["model_dir"], "--tokenizer-mode", settings["tokenizer_mode"],
             "--dtype", "${%s}" % DTYPE_VARIABLE]
    if settings["trust_remote_code"]:
        vllm.append("--trust-remote-code")
    vllm += ["--served-model-name", settings["served_model_name"],
             "--gpu-memory-utilization", str(utilization or 0.9),
             "--max-model-len", str(replica["max_model_len"]),
             "--tensor-parallel-size", str(replica["tensor_parallel_size"]), *engine_args(settings)]
    if node:
        vllm += ["--pipeline-parallel-size", str(replica.get("pipeline_parallel_size") or 1),
                 "--nnodes", str(len(node.hosts)), "--node-rank", str(node.rank),
                 "--master-addr", node.head_address, "--master-port", str(node.rendezvous_port)]
    mounts = []
    if container:
        # The model's link: the role mounts the release it points to.
        mounts = [[settings["model_current"], layout.CONTAINER_MODEL_DIR, True],
                  [layout.CONTAINER_API_KEY_FILE, layout.CONTAINER_KEY_FILE, True],
                  [layout.supervisor_state_dir("container", index), layout.CONTAINER_STATE_DIR, False]]
    return ReplicaSpec(
        index=index, serve_mode=settings["serve_mode"], served_model_name=settings["served_model_name"], port=port,
        tensor_parallel_size=int(replica["tensor_parallel_size"]), gpus=gpus, gpu_memory_utilization=utilization,
        max_model_len=int(replica["max_model_len"]), unit=layout.replica_unit(index),
        container=layout.replica_container(index), environment=environment, argv=supervisor + ["--"] + vllm,
        exec_start=systemd_exec_start(supervisor + ["--"] + vllm),
        state_file=state_file, textfile=textfile, stop_timeout_s=int(settings["drain_timeout_s"]) + STOP_MARGIN_S, mounts=mounts,
        node=node.to_dict() if node else None)


def plan_specs(settings: dict, plan, *, extra_env: dict[str, str] | None = None) -> dict[str, list[ReplicaSpec]]:
    """host -> the specs of its planned replicas (the planner's DeploymentPlan)."""
    return {host: [build_replica_spec(settings, replica.to_dict(), extra_env=extra_env) for replica in host_plan.replicas]
            for host, host_plan in plan.hosts.items()}


def build_node_specs(settings: dict, replica: dict, networks: dict[str, dict[str, str]], *, rendezvous_port: int,
                     status_port: int, extra_env: dict[str, str] | None = None) -> dict[str, ReplicaSpec]:
    """host -> the spec of its node of one replica over hosts (the planner's MultiHostReplicaPlan as a
    dict), replica 0 on each; ``networks``: host -> {"address", "interface"} on the hosts' network.
    vLLM's own multi-node launcher: the head (rank 0) serves the API, every other node is headless."""
    hosts = list(replica["hosts"])
    interfaces = {networks[host]["interface"] for host in hosts}
    if len(interfaces) != 1:  # one name for GLOO/NCCL_SOCKET_IFNAME across the hosts keeps it simple
        raise ValueError(f"the hosts of one replica name their network's interface differently: {sorted(interfaces)}")
    [interface] = interfaces
    addresses = [networks[host]["address"] for host in hosts]
    specs = {}
    for rank, host in enumerate(hosts):
        place = NodePlace(rank=rank, hosts=hosts, addresses=addresses, interface=interface,
                          rendezvous_port=rendezvous_port, status_port=status_port)
        planned = {"index": 0, "port": replica["port"], "gpus": replica["gpus"].get(host) or [],
                   "gpu_memory_utilization": replica.get("gpu_memory_utilization"),
                   "max_model_len": replica["max_model_len"], "tensor_parallel_size": replica["tensor_parallel_size"],
                   "pipeline_parallel_size": replica["pipeline_parallel_size"]}
        specs[host] = build_replica_spec(settings, planned, extra_env=extra_env, node=place)
    return specs


def deployment_specs(config, profile, plan, networks: dict | None = None) -> dict[str, list[ReplicaSpec]]:
    """host -> the specs of everything the plan runs there: its own replicas, or its node of a
    replica over hosts (``networks``: host -> its address and interface on the hosts' network, as
    fm9g_deploy.facts.read_hosts found them). What deploy writes, status compares, verify checks."""
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.facts import node_networks

    if plan.multi_host_replicas and config.serving.serve_mode == "container":
        raise UserError(f"the plan runs one replica over {', '.join(plan.multi_host_replicas[0].hosts)}, which "
                        "fm9g-deploy serves as systemd units only so far; set serving.serve_mode: systemd")
    settings = serve_settings(config, profile)
    specs = plan_specs(settings, plan)
    for replica in plan.multi_host_replicas:
        nodes = build_node_specs(settings, replica.to_dict(), node_networks(networks or {}, replica.hosts),
                                 rendezvous_port=config.serving.rendezvous_port,
                                 status_port=config.serving.node_status_port)
        for host, spec in nodes.items():
            specs[host] = [spec]
    return specs


def serves_api(spec: dict) -> bool:
    """Whether a replica's spec (as a dict) runs an API server: every replica but a headless node."""
    return not spec.get("node") or int(spec["node"]["rank"]) == 0


def probe_argv(settings: dict, replicas: list[ReplicaSpec], *, cache_key: str,
               timeout_s: int = PROBE_TIMEOUT_S) -> list[str]:
    """The engine probe's command line (systemd: on the host; container: in a one-off container).
    Its context is the shortest of ``replicas``: the probe needs a forward pass, not a full context."""
    container = settings["serve_mode"] == "container"
    cache = layout.engine_probe_cache(settings["serve_mode"])
    return engine_probe_argv(
        settings["python"], settings["model_dir"], settings["dtype"], timeout_s=timeout_s,
        max_model_len=min(replica.max_model_len for replica in replicas), engine_args=settings["vllm_args"],
        cpu_kvcache_space_gib=settings["cpu_kvcache_space_gib"] if settings["accelerator"] == "cpu" else None,
        cache=f"{layout.CONTAINER_STATE_DIR}/{cache.rsplit('/', 1)[1]}" if container else cache, cache_key=cache_key)


def engine_probe_argv(python: str, model_dir: str, dtype: str, *, timeout_s: int, max_model_len: int | None,
                      engine_args: list[str], cpu_kvcache_space_gib: int | str | None = None,
                      cache: str | None = None, cache_key: str | None = None) -> list[str]:
    """The engine probe's command line in ``python``'s env: ``dtype``, else float32 (deploy's probe and
    the image smoke test's)."""
    argv = [python, layout.ENGINE_PROBE, "--python", python, "--model", model_dir, "--dtype", dtype,
            "--fallback", "float32", "--timeout", str(timeout_s)]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if cache:
        argv += ["--cache", cache, "--cache-key", cache_key]
    argv += [f"--engine-arg={arg}" for arg in engine_args]
    if cpu_kvcache_space_gib is not None:
        argv += ["--env", f"VLLM_CPU_KVCACHE_SPACE={cpu_kvcache_space_gib}"]
    return argv
