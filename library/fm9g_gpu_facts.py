#!/usr/bin/python
"""Ansible module: report a host's NVIDIA GPUs and its driver's CUDA version as facts."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_gpu_facts
short_description: Report NVIDIA GPUs and the driver's CUDA version
description:
  - Runs C(nvidia-smi --query-gpu=...) (the fields of fm9g_gpu.QUERY_FIELDS, MIG mode included;
    asked again without C(compute_cap) and C(mig.mode.current) on drivers that predate them) and
    C(nvidia-smi --version) (or plain C(nvidia-smi) on drivers without C(--version)) and sets the
    fact C(fm9g_gpu).
  - A GPU with a field nvidia-smi has no value for (C([N/A]), C([Unknown Error])) is kept, with
    that field null; output that cannot be read (a GPU index listed twice, wrong columns) gives no
    GPUs and a C(problem) saying why.
  - A host without nvidia-smi is not an error; it reports C(gpu_count=0) and a C(problem) saying why.
  - Changes nothing; supports check mode.
options:
  nvidia_smi:
    description:
      - Name or path of nvidia-smi. A name is searched on PATH, the sbin directories and
        /usr/local/nvidia/bin (where NVIDIA's container images put it, often off PATH over SSH).
    type: str
    default: nvidia-smi
author: fm9g-deploy
"""

EXAMPLES = r"""
- name: Read GPUs and driver
  fm9g_gpu_facts:

- name: Show them
  ansible.builtin.debug:
    msg: "{{ fm9g_gpu.gpu_count }} GPUs, driver CUDA {{ fm9g_gpu.cuda_driver_version }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: dict
  contains:
    fm9g_gpu:
      description: >-
        gpu_count, gpus (index, uuid, name, memory_total_mib, memory_used_mib, memory_free_mib,
        driver_version, pci_bus_id, compute_capability, mig_mode (Enabled, Disabled or null),
        unreported (field -> what nvidia-smi printed instead of a value)), driver_version,
        cuda_driver_version, nvidia_smi (path or null) and problem (why no GPU was found, or null).
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_gpu import gather_gpu_facts

EXTRA_NVIDIA_SMI_DIRS = ["/usr/local/nvidia/bin"]


def main() -> None:
    module = AnsibleModule(
        argument_spec={"nvidia_smi": {"type": "str", "default": "nvidia-smi"}},
        supports_check_mode=True,
    )
    nvidia_smi = module.get_bin_path(module.params["nvidia_smi"], required=False,
                                     opt_dirs=EXTRA_NVIDIA_SMI_DIRS)

    def run(argv):
        # C locale: the parser reads nvidia-smi's English labels and plain numbers.
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    facts = gather_gpu_facts(nvidia_smi, run)
    module.exit_json(changed=False, ansible_facts={"fm9g_gpu": facts.to_dict()})


if __name__ == "__main__":
    main()
