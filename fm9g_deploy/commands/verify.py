"""`fm9g-deploy verify`: run the shipped pytest-testinfra suite against every serving host."""

from __future__ import annotations

import argparse
from pathlib import Path

from fm9g_deploy.commands.common import add_inventory_args

DESCRIPTION = """\
Check every serving host and print a pass/fail table (exit 0: all passed, 1: a check failed):

  env      the env exists, runs the profile's Python, imports torch / transformers / vLLM at
           the locked versions, `pip check` is clean, it holds the locked requirements
  gpu      nvidia-smi shows the planned GPUs; each running replica has exactly its planned
           CUDA_VISIBLE_DEVICES; torch sees them, per host and per replica (skipped without a GPU)
  model    config.json, tokenizer files and weights are there; the installed release is the
           pinned tarball's sha256
  service  every replica unit is enabled, running, restarted on failure and on loopback only;
           the key's env file is root:root 0600 and holds the deployment's key; the key is on
           no process's command line
  gateway  nginx runs, listens on the service port, passes `nginx -t`
  api      through each gateway: /v1/models lists the served name, a chat completion and a
           streamed one return text, a two-turn conversation works, no key or a wrong key gets
           401, a route outside the allowlist is refused

A failed check says why in one line; checks of a unit attach its recent journal (shown under
the table, and in the JUnit file). Checks are pytest tests named like
test_replica_unit_is_running[host2-replica1]: select them with -k. The hosts are read over SSH
through the inventory; the API is called from here. Changes nothing.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("verify", help="check the fleet: env, model, service, gateway, API (pass/fail)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inventory_args(parser)
    parser.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible host pattern)")
    parser.add_argument("-k", dest="keyword", metavar="EXPR",
                        help="only the checks matching this pytest -k expression (e.g. 'service or api')")
    parser.add_argument("--junitxml", type=Path, metavar="FILE", help="also write the results as JUnit XML (for CI)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output as the checks run")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from fm9g_deploy.ansible import serving_hosts
    from fm9g_deploy.commands.common import config_for, inventory_path
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.verification import build_facts, check_keyword, render, run_suite, verdict

    inventory = inventory_path(args)
    config = config_for(args)
    if args.keyword is not None:
        check_keyword(args.keyword)
    if args.junitxml is not None and not args.junitxml.resolve().parent.is_dir():
        raise UserError(f"--junitxml {args.junitxml}: directory {args.junitxml.resolve().parent} does not exist; "
                        "create it or name a file in an existing directory")
    serving_hosts(inventory, args.limit)  # the inventory's own mistakes first, before the cache's
    facts = build_facts(config, inventory, args.limit)
    print(f"verify: {len(facts.hosts)} host(s): {', '.join(sorted(facts.hosts))}", file=sys.stderr)
    suite = run_suite(facts, junitxml=args.junitxml.resolve() if args.junitxml else None,
                      keyword=args.keyword, verbose=args.verbose)
    code = verdict(suite, args.keyword)
    render(suite.results, title=f"verify: {config.model.name} on profile {config.profile}")
    if args.junitxml:
        print(f"JUnit XML: {args.junitxml}", file=sys.stderr)
    return code
