#!/usr/bin/python
"""Ansible module: the few host facts provisioning needs, and free disk space, in one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_host_facts
short_description: Read the OS, architecture, package manager and free space a provision needs
description:
  - Runs Ansible's own fact collectors for the distribution, the platform and the package
    manager only (the facts C(setup) would set under those names, so C(ansible_facts['os_family'])
    and the rest read the same), and measures the free bytes on the filesystem that holds
    C(path), or would hold it (its closest existing parent).
  - One module run instead of fact gathering plus a C(df) task, so a provision that has nothing
    to do stays close to the cost of a ping.
  - Changes nothing; supports check mode.
options:
  path:
    description: Directory whose filesystem's free space is measured (it need not exist yet).
    type: path
    required: true
author: fm9g-deploy
"""

RETURN = r"""
free_bytes:
  description: Bytes available to unprivileged writers on the filesystem holding C(path).
  returned: always
  type: int
measured_path:
  description: The existing directory that was measured (C(path) or its closest existing parent).
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.facts import ansible_collector, default_collectors
from ansible.module_utils.facts.namespace import PrefixFactNamespace

SUBSET = ["!all", "!min", "distribution", "platform", "pkg_mgr"]


def closest_existing(path):
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def main():
    module = AnsibleModule(argument_spec={"path": {"type": "path", "required": True}}, supports_check_mode=True)
    collector = ansible_collector.get_ansible_collector(
        all_collector_classes=default_collectors.collectors, filter_spec="*", gather_subset=SUBSET,
        # The prefixed names, as setup uses: the package-manager collector reads ansible_os_family.
        namespace=PrefixFactNamespace(namespace_name="ansible", prefix="ansible_"),
        gather_timeout=10, minimal_gather_subset=frozenset())
    facts = collector.collect(module=module)
    measured = closest_existing(module.params["path"])
    stats = os.statvfs(measured)
    module.exit_json(changed=False, ansible_facts=facts, free_bytes=stats.f_bavail * stats.f_frsize,
                     measured_path=measured)


if __name__ == "__main__":
    main()
