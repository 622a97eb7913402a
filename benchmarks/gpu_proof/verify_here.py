#!/usr/bin/env python3
"""The verify suite's GPU checks against this host and its running replica (part of run.py).

The same suite and runner as `fm9g-deploy verify` (fm9g_deploy/verification.py run_suite), with
the facts of this one host reached through Ansible's local connection instead of SSH. Prints the
checks' outcomes as one JSON line; the API key comes in FM9G_PROOF_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fm9g_deploy.verification import run_suite  # noqa: E402
from fm9g_deploy.verify_suite.facts import DeploymentFacts, HostFacts, LockedPackage  # noqa: E402

HOST = "gpu-host"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replica", required=True, help="the planned replica, as JSON")
    parser.add_argument("--gpu-count", type=int, default=1)
    args = parser.parse_args()
    replica = json.loads(args.replica)
    with tempfile.TemporaryDirectory(prefix="fm9g-proof-verify-") as folder:
        inventory = Path(folder) / "hosts.ini"
        inventory.write_text(f"[serving]\n{HOST} ansible_connection=local ansible_python_interpreter={sys.executable}\n")
        facts = DeploymentFacts(
            inventory=str(inventory), profile="cuda130", python="3.12", env_prefix=sys.prefix, excluded=[],
            lock_sha256="", packages={role: LockedPackage(role, "") for role in ("torch", "transformers", "vllm")},
            model_name="fm9g-4b", model_root="/opt/fm9g/models/fm9g-4b", model_current="/opt/fm9g/models/fm9g-4b/current",
            model_sha256="", served_model_name="9g", gateway_port=8020, config_dir="/etc/fm9g",
            hosts={HOST: HostFacts(name=HOST, gateway_url=f"http://127.0.0.1:{replica['port']}", accelerator="cuda",
                                   gpu_count=args.gpu_count, replicas=[replica])},
            api_key=os.environ["FM9G_PROOF_API_KEY"], serve_mode="systemd")
        run = run_suite(facts, keyword="test_gpu")
    print(json.dumps({"exitstatus": run.exitstatus, "output_tail": run.output[-1500:] if not run.results else "",
                      "checks": [{"check": r["check"], "outcome": r["outcome"], "reason": r["reason"],
                                  "replica": r.get("replica")} for r in run.results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
