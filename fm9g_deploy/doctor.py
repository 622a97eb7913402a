"""`fm9g-deploy doctor`'s checks of the control node: each a small function returning results.

A check never raises for what it finds; it says what is wrong and how to fix it. Heavy imports
(ansible, docker, packaging) happen inside the checks that need them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fm9g_deploy.errors import one_line
from fm9g_deploy.paths import (
    ANSIBLE_CFG,
    CONTENT_ROOT,
    LIBRARY_DIR,
    LOCKS_DIR,
    MODULE_UTILS_DIR,
    PLAYBOOKS_DIR,
    ROLES_DIR,
    cache_dir,
)

#: pyproject.toml's requires-python and ansible-core pin; tests/unit/test_doctor.py keeps them in step.
REQUIRES_PYTHON = ">=3.11"
ANSIBLE_CORE_SPEC = ">=2.17,<2.20"
#: The keys ssh tries by itself (those a doctor accepts as "a key is available").
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
#: The inventory variables that name a host's private key (the second is Ansible's alias).
KEY_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")
#: Connection plugins that log in with an SSH key (a host with another, e.g. local, needs none).
SSH_CONNECTIONS = ("ssh", "smart", "paramiko", "paramiko_ssh")
#: Seconds a probe (ssh-add, the Docker engine) may take.
PROBE_TIMEOUT = 5
DEFAULT_MIN_FREE_GIB = 20.0
#: The longest line a check prints, its "FAIL name: ... fix: ..." included.
MAX_LINE = 300
#: The checkout this package runs from, when it runs from one (scripts/ beside the package).
_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
ENSURE_ENGINE = _CHECKOUT_ROOT / "scripts" / "ensure-engine.sh"


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    #: Not needed for what was asked (the engine when an inventory is given): shown, never a failure.
    skipped: bool = False

    def line(self) -> str:
        if self.skipped:
            label, text = "skip", f"{self.name}: {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")
        elif self.ok:
            label, text = "ok  ", f"{self.name}: {self.detail}"
        else:
            label, text = "FAIL", f"{self.name}: {self.detail}; fix: {self.fix or 'see the detail'}"
        return f"{label} {one_line(text, MAX_LINE - len(label) - 1)}"

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


# -- the interpreter and Ansible -----------------------------------------------------------------

def check_python(version: tuple[int, ...] | None = None) -> CheckResult:
    from packaging.specifiers import SpecifierSet

    version = tuple(version or sys.version_info[:3])
    text = ".".join(str(part) for part in version)
    if text in SpecifierSet(REQUIRES_PYTHON):
        return CheckResult("python", True, f"{text} at {sys.executable}")
    return CheckResult("python", False, f"{text} at {sys.executable} does not satisfy {REQUIRES_PYTHON}",
                       f"install Python {REQUIRES_PYTHON.lstrip('>=')} or newer and reinstall fm9g-deploy with it")


def check_ansible_core() -> CheckResult:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    install = f"{sys.executable} -m pip install 'ansible-core{ANSIBLE_CORE_SPEC}'"
    try:
        version = importlib.metadata.version("ansible-core")
    except importlib.metadata.PackageNotFoundError:
        return CheckResult("ansible-core", False, f"not installed for {sys.executable}", install)
    try:
        importlib.import_module("ansible")
    except Exception as exc:  # a broken install fails in many ways; all mean the same here
        return CheckResult("ansible-core", False, f"{version} is installed but `import ansible` fails "
                           f"({type(exc).__name__}: {str(exc)[:120]})", install.replace("install", "install --force-reinstall", 1))
    try:
        inside = Version(version) in SpecifierSet(ANSIBLE_CORE_SPEC)
    except InvalidVersion:
        inside = False
    if not inside:
        return CheckResult("ansible-core", False, f"{version} is outside {ANSIBLE_CORE_SPEC}", install)
    return CheckResult("ansible-core", True, f"{version} (wanted {ANSIBLE_CORE_SPEC})")


def check_ansible_playbook() -> CheckResult:
    from fm9g_deploy import ansible as fm9g_ansible
    from fm9g_deploy.errors import UserError

    try:
        found = fm9g_ansible.ansible_executable("ansible-playbook")
    except UserError:
        return CheckResult("ansible-playbook", False, f"not beside {sys.executable} nor on PATH",
                           f"{sys.executable} -m pip install --force-reinstall 'ansible-core{ANSIBLE_CORE_SPEC}', "
                           "or put its bin directory on PATH")
    return CheckResult("ansible-playbook", True, found)


# -- the project's Ansible content ---------------------------------------------------------------

def check_content() -> CheckResult:
    wanted = [(ANSIBLE_CFG, False), (PLAYBOOKS_DIR, True), (ROLES_DIR, True), (LIBRARY_DIR, True),
              (MODULE_UTILS_DIR, True), (LOCKS_DIR, True)]
    missing = [str(path) for path, is_dir in wanted if not (path.is_dir() if is_dir else path.is_file())]
    if missing:
        return CheckResult("ansible content", False, f"missing: {', '.join(missing)}",
                           f"reinstall the wheel ({sys.executable} -m pip install --force-reinstall fm9g-deploy)")
    return CheckResult("ansible content", True, f"playbooks, roles, modules and locks under {CONTENT_ROOT}")


# -- SSH ------------------------------------------------------------------------------------------

def check_ssh_client() -> CheckResult:
    found = shutil.which("ssh")
    if not found:
        return CheckResult("ssh client", False, "no `ssh` on PATH",
                           "install the OpenSSH client (apt-get install openssh-client)")
    return CheckResult("ssh client", True, found)


def agent_keys() -> int:
    """How many keys the SSH agent (SSH_AUTH_SOCK) lists; 0 without an agent or ssh-add."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return 0
    ssh_add = shutil.which("ssh-add")
    if not ssh_add:
        return 0
    try:
        listed = subprocess.run([ssh_add, "-l"], capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listed.returncode != 0:
        return 0
    return len([line for line in listed.stdout.splitlines() if line.strip()])


def default_keys(home: Path | None = None) -> list[Path]:
    folder = (home or Path.home()) / ".ssh"
    return [folder / name for name in DEFAULT_KEYS if (folder / name).is_file()]


def inventory_key_files(inventory: Path) -> tuple[dict[Path, list[str]], list[str]]:
    """({key file the inventory names: its hosts}, SSH hosts that name none); UserError if unreadable.

    A relative key path is taken from where the playbooks run (the content root), as Ansible does.
    """
    import contextlib
    import io

    from fm9g_deploy import ansible as fm9g_ansible

    manager, loader, _ = fm9g_ansible.read_inventory(inventory)  # sets ANSIBLE_* before ansible loads
    from ansible.vars.manager import VariableManager

    variables = VariableManager(loader=loader, inventory=manager)
    keys: dict[Path, list[str]] = {}
    without: list[str] = []
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        hosts = manager.get_hosts()
        for host in hosts:
            host_vars = variables.get_vars(host=host)
            if str(host_vars.get("ansible_connection") or "ssh").rsplit(".", 1)[-1] not in SSH_CONNECTIONS:
                continue  # local, docker, ...: no key needed
            named = next((host_vars[key] for key in KEY_VARS if host_vars.get(key)), None)
            if not named:
                without.append(host.name)
                continue
            path = Path(os.path.expanduser(str(named)))
            if not path.is_absolute():
                path = CONTENT_ROOT / path
            keys.setdefault(path, []).append(host.name)
    return keys, without


def check_key_file(path: Path, hosts: list[str]) -> CheckResult:
    name = f"ssh key {path}"
    who = f"named for {_hosts(hosts)}"
    if "{{" in str(path):
        return CheckResult(name, True, f"{who}; a template, not checked")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return CheckResult(name, False, f"{who}; {exc.strerror or 'cannot be read'}",
                           f"create it (ssh-keygen -t ed25519 -f {path}) or fix ansible_ssh_private_key_file")
    if not stat.S_ISREG(mode):
        return CheckResult(name, False, f"{who}; not a regular file", "point ansible_ssh_private_key_file at a key file")
    if mode & 0o077:
        return CheckResult(name, False, f"{who}; mode {stat.S_IMODE(mode):04o} lets others read it, so ssh "
                           "refuses it", f"chmod 600 {path}")
    if not os.access(path, os.R_OK):
        return CheckResult(name, False, f"{who}; not readable by this user",
                           "run as the key's owner or chown it to this user")
    return CheckResult(name, True, f"{who}; mode {stat.S_IMODE(mode):04o}")


def check_ssh_keys(inventory: Path | None = None) -> list[CheckResult]:
    """The key files an inventory names, then (for hosts naming none) an agent key or a default key."""
    results = []
    without: list[str] | None = None
    if inventory is not None:
        keys, without = inventory_key_files(inventory)
        results = [check_key_file(path, hosts) for path, hosts in keys.items()]
        if not without:
            return results or [CheckResult("ssh key", True, f"no host of {inventory} connects over SSH")]
    for_whom = f" (for {_hosts(without)}, which name no ansible_ssh_private_key_file)" if without else ""
    listed = agent_keys()
    if listed:
        results.append(CheckResult("ssh key", True, f"the agent (SSH_AUTH_SOCK) holds {listed} key(s){for_whom}"))
        return results
    found = default_keys()
    if found:
        results.append(CheckResult("ssh key", True, f"{found[0]}{for_whom}"))
        return results
    results.append(CheckResult(
        "ssh key", False,
        f"no agent key, none of ~/.ssh/{{{','.join(DEFAULT_KEYS)}}}{for_whom}",
        "ssh-keygen -t ed25519 and copy the .pub to the hosts (ssh-copy-id), load a key with ssh-add, "
        "or set ansible_ssh_private_key_file in the inventory"))
    return results


# -- the Docker engine, disk ----------------------------------------------------------------------

def running_from_checkout() -> bool:
    return ENSURE_ENGINE.is_file() and (_CHECKOUT_ROOT / "pyproject.toml").is_file()


def ping_engine(timeout: float = PROBE_TIMEOUT) -> None:
    """Raise when the Docker engine (DOCKER_HOST or the local socket) does not answer a ping."""
    import docker

    client = docker.from_env(timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def check_engine(required: bool) -> CheckResult:
    try:
        ping_engine()
    except Exception as exc:  # the SDK, requests and urllib3 each have their own way to say "not there"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        if running_from_checkout():
            fix = f"run `bash scripts/ensure-engine.sh` from {_CHECKOUT_ROOT}"
        else:
            fix = "install docker.io and start dockerd (`systemctl start docker`)"
        if not required:
            return CheckResult("docker engine", True, f"not answering ({reason}); only the sandbox needs it",
                               fix, skipped=True)
        return CheckResult("docker engine", False, f"not answering ({reason}); the sandbox needs it", fix)
    return CheckResult("docker engine", True, "answers")


def existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def check_disk(min_free_gib: float = DEFAULT_MIN_FREE_GIB, folder: Path | None = None) -> CheckResult:
    wanted = folder or cache_dir()
    where = existing_parent(wanted)
    free_gib = shutil.disk_usage(where).free / 2**30
    detail = f"{free_gib:.1f} GiB free at {where} (artifact cache {wanted}; wanted {min_free_gib:g} GiB)"
    if free_gib < min_free_gib:
        return CheckResult("disk", False, detail, f"free space there, or set FM9G_DEPLOY_CACHE_DIR to a "
                           f"folder on a disk with {min_free_gib:g} GiB free")
    return CheckResult("disk", True, detail)


# -- the inventory's hosts ------------------------------------------------------------------------

def check_inventory(inventory: Path) -> CheckResult:
    """The inventory parses and has hosts (the ping playbook would otherwise run nothing and pass)."""
    from fm9g_deploy import ansible as fm9g_ansible
    from fm9g_deploy.errors import UserError

    try:
        manager, _, warnings = fm9g_ansible.read_inventory(inventory)
        problem = fm9g_ansible.inventory_parse_problem(inventory, warnings)
        hosts = manager.get_hosts()
    except UserError as exc:
        return CheckResult("inventory", False, str(exc).split("; fix it")[0], f"fix {inventory}")
    show = f"`ansible-inventory -i {inventory} --graph` shows what Ansible reads"
    if problem:
        return CheckResult("inventory", False, f"{inventory} cannot be parsed ({problem[:200]})", f"fix it; {show}")
    if not hosts:
        return CheckResult("inventory", False, f"{inventory} has no hosts", f"put your hosts in it; {show}")
    return CheckResult("inventory", True, f"{inventory}: {len(hosts)} host(s)")


def check_hosts(inventory: Path) -> list[CheckResult]:
    """Run playbooks/ping.yml; one failing result per host that did not answer."""
    from fm9g_deploy import ansible as fm9g_ansible
    from fm9g_deploy.errors import OperationFailed, UserError

    try:
        result = fm9g_ansible.run_playbook("ping.yml", inventory, quiet=True)
    except (UserError, OperationFailed) as exc:
        return [CheckResult("hosts", False, f"the ping playbook did not run: {exc}", "fix what it says, then run "
                            "doctor again")]
    results = []
    for host, counts in result.stats.items():
        if not (counts.get("unreachable") or counts.get("failures")):
            continue
        said = "; ".join(line.split(": ", 1)[1] for line in result.problems if line.startswith(f"{host}: "))
        if counts.get("unreachable"):
            results.append(CheckResult(f"host {host}", False, f"unreachable: {said or 'no answer over SSH'}",
                                       f"check its address, port, user and key: `ssh` to it by hand "
                                       f"(`ansible -i {inventory} {host} -m ping -vvv` shows the SSH command)"))
        else:
            results.append(CheckResult(f"host {host}", False, f"failed: {said or 'a task failed'}",
                                       "the host needs Python 3 (ansible_python_interpreter) and a user that "
                                       "can log in; see the task's message"))
    if results:
        return results
    if not result.ok or not result.stats:
        detail = "; ".join(result.problems) or f"ansible-playbook exited with {result.rc}"
        return [CheckResult("hosts", False, detail, f"fix what it says (`fm9g-deploy ping -i {inventory}` "
                            "shows the run)")]
    return [CheckResult("hosts", True, f"all {len(result.stats)} host(s) answered Ansible over SSH")]


def _hosts(hosts: list[str]) -> str:
    return ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")


# -- all of them ----------------------------------------------------------------------------------

def run_checks(inventory: Path | None = None, *, sandbox: bool = False,
               min_free_gib: float = DEFAULT_MIN_FREE_GIB) -> list[CheckResult]:
    results = [check_python()]
    ansible_core = check_ansible_core()
    playbook = check_ansible_playbook()
    content = check_content()
    results += [ansible_core, playbook, content, check_ssh_client()]
    inventory_ok = None
    if inventory is not None and ansible_core.ok:
        inventory_ok = check_inventory(inventory)
    if inventory_ok is not None and inventory_ok.ok:
        results += check_ssh_keys(inventory)
    else:
        results += check_ssh_keys(None)
    results.append(check_engine(required=sandbox or inventory is None))
    results.append(check_disk(min_free_gib))
    if inventory is not None:
        if inventory_ok is None:
            results.append(CheckResult("hosts", True, "not checked: ansible-core is not usable (see above)",
                                       skipped=True))
            return results
        results.append(inventory_ok)
        blocker = next((r for r in (playbook, content, inventory_ok) if not r.ok), None)
        if blocker is not None:
            results.append(CheckResult("hosts", True, f"not checked: {blocker.name} failed (see above)",
                                       skipped=True))
        else:
            results += check_hosts(inventory)
    return results


def summary(results: list[CheckResult]) -> str:
    failed = [r.name for r in results if not r.ok]
    if failed:
        return one_line(f"doctor: {len(failed)} of {len(results)} checks failed: {', '.join(failed)}", MAX_LINE)
    skipped = sum(r.skipped for r in results)
    return f"doctor: all {len(results) - skipped} checks passed" + (f" ({skipped} skipped)" if skipped else "")
