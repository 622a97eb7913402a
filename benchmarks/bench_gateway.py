"""What the gateway costs: throughput and added latency, gateway against direct replica access.

    .venv/bin/python benchmarks/bench_gateway.py [--sandbox fm9g-sandbox] [--host host1]

Needs a deployed sandbox (`make demo` deploys `fm9g-sandbox`). It copies gateway_probe.py to
the host and runs it there with the host's python3, so direct and gateway traffic both start
on the host's loopback and differ only by nginx: sequential GET /v1/models for latency (p50,
p90), and completions from a few threads for throughput, spread over the replicas when direct.
Rounds alternate between the two paths. Targets: at least 0.97x the direct throughput, under
2 ms added p50. Prints figures, asserts nothing; the machine's load moves them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fm9g_deploy.config import load_config  # noqa: E402
from fm9g_deploy.sandbox.engine import docker_client  # noqa: E402
from fm9g_deploy.sandbox.hosts import sandbox_dir  # noqa: E402

PROBE = Path(__file__).resolve().parent / "gateway_probe.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", default="fm9g-sandbox", help="a deployed sandbox (default: the demo's)")
    parser.add_argument("--host", default="host1")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency-requests", type=int, default=400, help="latency probes per path per round")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--per-worker", type=int, default=8, help="completions per worker per round")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per completion (a short answer)")
    args = parser.parse_args()

    folder = sandbox_dir(args.sandbox)
    inventory = folder / "hosts.yml"
    if not inventory.is_file():
        sys.exit(f"bench_gateway: no sandbox {args.sandbox}; run `make demo` (or deploy one) first")
    config = load_config(folder / "fm9g.yml")
    host = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"][args.host]
    container = docker_client().containers.get(host["fm9g_sandbox_container"])
    replicas = config.serving.replicas_per_host or 1
    spec = {
        "key_file": "/etc/fm9g/api-key.env",
        "replica_ports": [config.serving.replica_base_port + i for i in range(replicas)],
        "gateway_port": config.serving.port,
        "model": config.serving.served_model_name,
        "rounds": args.rounds, "latency_requests": args.latency_requests,
        "workers": args.workers, "per_worker": args.per_worker, "max_tokens": args.max_tokens,
    }
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(PROBE, arcname=PROBE.name)
    container.put_archive("/tmp", archive.getvalue())
    code, output = container.exec_run(["python3", f"/tmp/{PROBE.name}", json.dumps(spec)], demux=True)
    stdout, stderr = output
    if code != 0:
        sys.exit(f"bench_gateway: the probe failed on {args.host}: {(stderr or stdout or b'').decode()[-1500:]}")
    result = json.loads(stdout)
    direct, gateway = result["direct"], result["gateway"]

    print(f"\ngateway benchmark: sandbox {args.sandbox}, {args.host}, {replicas} replica(s), "
          f"{args.rounds} alternating rounds")
    print(f"{'':10} {'p50 ms':>8} {'p90 ms':>8} {'req/s':>8} {'out tok/s':>10} {'errors':>7}")
    for name, row in (("direct", direct), ("gateway", gateway)):
        print(f"{name:10} {row['latency_p50_ms']:8.2f} {row['latency_p90_ms']:8.2f} {row['requests_per_s']:8.2f} "
              f"{row['output_tokens_per_s']:10.1f} {row['errors']:7d}")
    ratio = gateway["output_tokens_per_s"] / direct["output_tokens_per_s"]
    added = gateway["latency_p50_ms"] - direct["latency_p50_ms"]
    print(f"\nthroughput ratio gateway/direct: {ratio:.3f}x (target >= 0.97x)")
    print(f"added p50 latency: {added:+.2f} ms (target < 2 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
