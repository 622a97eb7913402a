"""The verify suite's plumbing: facts, parametrization per host and replica, reasons and journals.

Every check takes ``hostname`` (one test per inventory host) or ``replica`` (one per planned
replica). A failed check's report is one line; checks marked ``journal(...)`` attach the recent
journal of their units. ``--fm9g-report FILE`` writes every outcome as JSON for the CLI's table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from fm9g_deploy.layout import replica_unit as unit_of_replica
from fm9g_deploy.replica_spec import serves_api
from fm9g_deploy.verify_suite.facts import FACTS_ENV, GATEWAY_UNIT, FactsError, read_facts
from fm9g_deploy.verify_suite.support import fail, journal, last_line, one_line, redact, share_ssh_connection

#: Unit aliases the journal marker takes.
REPLICAS = "replicas"
GATEWAY = "gateway"


def pytest_addoption(parser):
    group = parser.getgroup("fm9g", "fm9g-deploy verify")
    group.addoption("--fm9g-facts", metavar="FILE",
                    help=f"the deployment's facts (default: ${FACTS_ENV}); `fm9g-deploy verify` writes them")
    group.addoption("--fm9g-report", metavar="FILE", help="write every check's outcome as JSON")
    group.addoption("--fm9g-progress", action="store_true", help="one character per check on stderr")


def pytest_configure(config):
    path = config.getoption("--fm9g-facts") or os.environ.get(FACTS_ENV)
    if not path:
        raise pytest.UsageError("no deployment facts: run the suite with `fm9g-deploy verify` (or pass --fm9g-facts)")
    try:
        config.fm9g_facts = read_facts(path)
    except FactsError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.fm9g_hosts = {}
    config.pluginmanager.register(Recorder(config), "fm9g-recorder")


def pytest_generate_tests(metafunc):
    facts = metafunc.config.fm9g_facts
    names = sorted(facts.hosts)
    if "replica" in metafunc.fixturenames:
        pairs = [(name, replica["index"]) for name in names for replica in facts.hosts[name].replicas]
        metafunc.parametrize(("hostname", "replica_index"), pairs,
                             ids=[f"{name}-replica{index}" for name, index in pairs])
    elif "hostname" in metafunc.fixturenames:
        metafunc.parametrize("hostname", names, ids=names)


#: In serve_mode container the env lives in the image and the replicas are containers: the host's
#: env and unit checks do not apply; test_container.py checks both inside the containers.
SYSTEMD_ONLY = ("test_env.py",)


def pytest_runtest_setup(item):
    if item.config.fm9g_facts.serve_mode == "container" and (
            item.path.name in SYSTEMD_ONLY or "replica_unit" in getattr(item, "fixturenames", ())):
        pytest.skip("serve_mode container: checked in the replica containers (container checks)")


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def facts(pytestconfig):
    return pytestconfig.fm9g_facts


@pytest.fixture
def host_facts(facts, hostname):
    return facts.hosts[hostname]


@pytest.fixture
def replica(host_facts, replica_index) -> dict:
    return next(r for r in host_facts.replicas if r["index"] == replica_index)


@pytest.fixture
def replica_unit(replica) -> str:
    return replica["unit"]


@pytest.fixture
def host(pytestconfig, hostname):
    """The testinfra host, over SSH through the Ansible inventory (one connection per host)."""
    return _testinfra_host(pytestconfig, hostname)


def _testinfra_host(config, hostname):
    """The host, once it answered a first command; every check of an unreachable host says why."""
    if hostname not in config.fm9g_hosts:
        import testinfra

        host = testinfra.get_host(f"ansible://{hostname}", ansible_inventory=config.fm9g_facts.inventory)
        share_ssh_connection(host.backend)
        try:
            answer = host.run("true")
            problem = "" if answer.rc == 0 else (last_line(answer.stderr) or f"exit {answer.rc}")
        except RuntimeError as exc:  # testinfra's ssh backend raises when ssh itself fails (exit 255)
            result = exc.args[0] if exc.args else None
            problem = last_line(getattr(result, "stderr", "") or "") or one_line(str(exc))
        config.fm9g_hosts[hostname] = f"{hostname} is unreachable: {problem}" if problem else host
    host = config.fm9g_hosts[hostname]
    if isinstance(host, str):
        fail(host)
    return host


@pytest.fixture
def gateway(facts, host_facts):
    """An HTTP client for the host's gateway, with the deployment's key."""
    import httpx

    if host_facts.replicas and not any(serves_api(replica) for replica in host_facts.replicas):
        node = host_facts.replicas[0]["node"]
        pytest.skip(f"runs node rank {node['rank']} of the replica over {', '.join(node['hosts'])}: the API is "
                    f"its head's, checked through {node['head']}'s gateway")
    headers = {"Authorization": f"Bearer {facts.api_key}"}
    timeout = httpx.Timeout(180, connect=10)
    with httpx.Client(base_url=host_facts.gateway_url, headers=headers, timeout=timeout) as client:
        yield client


# -- reasons, journals, results ----------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    failed = call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception)
    if failed and call.when in ("setup", "call"):
        for unit, text in _journals(item):
            item.add_report_section(call.when, "stdout", f"journal of {unit} (last lines):\n{text}")
    outcome = yield
    report = outcome.get_result()
    key = item.config.fm9g_facts.api_key
    if report.failed:
        reason = redact(_reason(call.excinfo) if call.excinfo else one_line(str(report.longrepr)), key)
        report.longrepr = reason
        report.fm9g_reason = reason
    elif report.skipped and isinstance(report.longrepr, tuple):
        report.fm9g_reason = one_line(report.longrepr[2].removeprefix("Skipped: "))
    report.fm9g_item = {"nodeid": item.nodeid, "area": item.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"),
                        "check": _title(item),
                        "host": item.callspec.params.get("hostname") if hasattr(item, "callspec") else None,
                        "replica": item.callspec.params.get("replica_index") if hasattr(item, "callspec") else None}
    report.fm9g_journals = [section for section in report.sections if section[1].startswith("journal of ")]


def _title(item) -> str:
    """The check's name in the table: its docstring's first line, else its function name."""
    doc = (item.function.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else item.originalname.removeprefix("test_").replace("_", " ")


def _reason(excinfo) -> str:
    exc = excinfo.value
    if excinfo.errisinstance(pytest.fail.Exception):
        return one_line(exc.msg or "failed")
    if isinstance(exc, AssertionError) and exc.args:
        return one_line(str(exc.args[0]))
    return one_line(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__


def _journals(item):
    marker = item.get_closest_marker("journal")
    params = getattr(item, "callspec", None)
    if marker is None or params is None or "hostname" not in params.params:
        return []
    hostname = params.params["hostname"]
    facts = item.config.fm9g_facts
    units = []
    for unit in marker.args:
        if unit == REPLICAS:
            indexes = ([params.params["replica_index"]] if "replica_index" in params.params
                       else [r["index"] for r in facts.hosts[hostname].replicas])
            units += [unit_of_replica(index) for index in indexes]
        else:
            units.append(GATEWAY_UNIT if unit == GATEWAY else unit)
    if isinstance(item.config.fm9g_hosts.get(hostname), str):
        return []  # unreachable: the reason says so, there is no journal to read
    try:
        host = _testinfra_host(item.config, hostname)
        return [(unit, redact(journal(host, unit), facts.api_key)) for unit in units]
    except BaseException as exc:  # noqa: BLE001 - a journal must never hide the check's own reason
        return [(unit, f"(journal not read: {one_line(str(exc))})") for unit in units]


class Recorder:
    """Collects one entry per check (its worst phase wins) and writes them for the CLI's table."""

    def __init__(self, config) -> None:
        self.config = config
        self.results: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report):
        if not hasattr(report, "fm9g_item"):
            return
        entry = self.results.setdefault(report.nodeid, {**report.fm9g_item, "outcome": "passed", "reason": "",
                                                        "journal": {}, "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + report.duration, 3)
        if report.failed and entry["outcome"] != "failed":
            entry.update(outcome="failed", reason=report.fm9g_reason)
        elif report.skipped and entry["outcome"] == "passed":
            entry.update(outcome="skipped", reason=getattr(report, "fm9g_reason", ""))
        for _, text in report.fm9g_journals:
            title, _, body = text.partition("\n")
            entry["journal"][title.split()[2]] = body
        if self.config.getoption("--fm9g-progress") and report.when == "teardown":
            sys.stderr.write({"passed": ".", "failed": "F", "skipped": "s"}[entry["outcome"]])
            sys.stderr.flush()

    def pytest_sessionfinish(self, session, exitstatus):
        if self.config.getoption("--fm9g-progress") and self.results:
            sys.stderr.write("\n")
        path = self.config.getoption("--fm9g-report")
        if path:
            Path(path).write_text(json.dumps({"exitstatus": int(exitstatus), "results": list(self.results.values())},
                                             indent=1), encoding="utf-8")
