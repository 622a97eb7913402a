"""Provisioning speed against its floor, measured in one run on fresh sandbox hosts.

    .venv/bin/python benchmarks/bench_provision.py [--hosts 2] [--keep]

It brings up a fresh sandbox of 2×N identical hosts (the same image, the same mirror) and:

1. floor: on hosts N+1..2N, concurrently, does by hand what provisioning must do: make a venv,
   pip install the same locked wheels offline from the mirror (hashes required), download the
   same model tarball, check its sha256 and unpack it. No Ansible, no checks, no idempotence.
2. provision: `fm9g-deploy provision` of hosts 1..N (fresh), timed end to end.
3. second run: `fm9g-deploy provision` again (everything in place), against a bare
   `ansible -m ping` of the same hosts.

It prints the times, the ratios against their targets (provision within 1.3x of the floor, a
second run within 5x of a ping), and the bytes each host moved (its network counters, SSH
included). Figures, not assertions: the machine's load moves them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fm9g_deploy.config import load_config  # noqa: E402
from fm9g_deploy.hostvars import load_stack  # noqa: E402
from fm9g_deploy.sandbox.engine import docker_client  # noqa: E402

SANDBOX = "fm9g-bench"
FLOOR_ENV = "/opt/floor/env"
FLOOR_MODEL = "/opt/floor/model"


def cli(*args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fm9g_deploy", *args], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if check and result.returncode != 0:
        sys.exit(f"bench_provision: `fm9g-deploy {' '.join(args)}` failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return elapsed, result


def net_bytes(container) -> int:
    """Bytes the host moved on its network interface so far (received plus sent)."""
    code, out = container.exec_run(["sh", "-c", "cat /sys/class/net/eth0/statistics/rx_bytes "
                                                "/sys/class/net/eth0/statistics/tx_bytes"])
    assert code == 0, out
    return sum(int(value) for value in out.split())


def floor_script(stack) -> str:
    """The hand-made provision, as a shell script (the by-hand steps of the guide, offline)."""
    pin = stack.model_pin()
    published = f"{stack.mirror_url}/{stack.published_path}"
    mirror_host = stack.mirror_url.split("://", 1)[1].split("/", 1)[0].split(":")[0]
    tarball = f"/opt/floor/{pin['filename']}"
    return " && ".join([
        "set -e",
        f"mkdir -p {FLOOR_MODEL}",
        f"python3 -m venv {FLOOR_ENV}",
        f"{FLOOR_ENV}/bin/python -m pip install -q --no-index --no-deps --require-hashes --only-binary=:all: "
        f"--disable-pip-version-check --progress-bar off --find-links {published}/ --trusted-host {mirror_host} "
        f"--requirement {published}/requirements.txt",
        f"curl -sSf -o {tarball} {stack.mirror_url}/sha256/{pin['sha256']}/{pin['filename']}",
        f"echo '{pin['sha256']}  {tarball}' | sha256sum -c --quiet",
        f"tar -xf {tarball} -C {FLOOR_MODEL}",
        f"rm -f {tarball}",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=2, help="hosts provisioned (as many more for the floor)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark sandbox afterwards")
    args = parser.parse_args()
    count = args.hosts

    cli("sandbox", "down", "--name", SANDBOX)  # fresh hosts, every time
    _, up = cli("sandbox", "up", "--name", SANDBOX, "--hosts", str(2 * count))
    inventory = Path(up.stdout.strip().splitlines()[-1])
    config_path = inventory.parent / "fm9g.yml"
    config = load_config(config_path)
    cli("artifacts", "fetch", "--profile", config.profile, "--model", config.model.name)
    stack = load_stack(config)
    hosts = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"]
    client = docker_client()
    containers = {name: client.containers.get(values["fm9g_sandbox_container"]) for name, values in hosts.items()}
    names = sorted(containers, key=lambda name: int(name.removeprefix("host")))
    provisioned, floor_hosts = names[:count], names[count:]
    limit = ",".join(provisioned)
    try:
        # 1. The floor, on its own identical hosts, all at once (as Ansible works on all at once).
        before = {name: net_bytes(containers[name]) for name in names}
        script = floor_script(stack)

        def by_hand(name: str) -> float:
            started = time.perf_counter()
            code, out = containers[name].exec_run(["bash", "-c", script])
            if code != 0:
                sys.exit(f"bench_provision: the by-hand floor failed on {name}: {out.decode()[-2000:]}")
            return time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(len(floor_hosts)) as pool:
            list(pool.map(by_hand, floor_hosts))
        floor_s = time.perf_counter() - started

        # 2. A fresh provision of the other hosts.
        provision_s, first = cli("provision", "-i", str(inventory), "--limit", limit)
        after = {name: net_bytes(containers[name]) for name in names}

        # 3. The second run, against a bare ping.
        second_s, _ = cli("provision", "-i", str(inventory), "--limit", limit)
        ping_started = time.perf_counter()
        ping = subprocess.run([str(Path(sys.executable).parent / "ansible"), "-i", str(inventory), limit,
                               "-m", "ping"], capture_output=True, text=True)
        ping_s = time.perf_counter() - ping_started
        if ping.returncode != 0:
            sys.exit(f"bench_provision: ansible -m ping failed: {ping.stdout[-1000:]}")
    finally:
        if not args.keep:
            cli("sandbox", "down", "--name", SANDBOX, check=False)

    mib = 1024 * 1024
    wheel_bytes = sum(a.size or 0 for a in stack.lock.python_files(stack.set_name))
    print(f"\nprovision benchmark: profile {config.profile}, model {config.model.name}, {count} host(s) each way, "
          f"{wheel_bytes / mib:.0f} MiB of wheels + {(stack.model_pin().get('size') or 0) / mib:.1f} MiB tarball")
    print(f"{'':34} {'seconds':>8}")
    print(f"{'floor (by hand, no Ansible)':34} {floor_s:8.1f}")
    print(f"{'fm9g-deploy provision (fresh)':34} {provision_s:8.1f}   ratio {provision_s / floor_s:.2f}x  (target <= 1.3x)")
    print(f"{'ansible -m ping':34} {ping_s:8.1f}")
    print(f"{'fm9g-deploy provision (2nd run)':34} {second_s:8.1f}   ratio {second_s / ping_s:.2f}x  (target <= 5x)")
    print("\nbytes moved per host (network counters, received + sent):")
    for name in names:
        role = "provision" if name in provisioned else "floor"
        print(f"  {name:8} {role:10} {(after[name] - before[name]) / mib:8.1f} MiB")
    print(f"\nprovision summary: {first.stdout.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
