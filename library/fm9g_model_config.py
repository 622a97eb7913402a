#!/usr/bin/python
"""Ansible module: make a model's config.json say what the profile's vLLM serves it as."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_model_config
short_description: Map an FM9G checkpoint's config.json to the architecture upstream vLLM serves
description:
  - Upstream vLLM does not know C(FM9GForCausalLM); it serves FM9G's math as
    C(MiniCPMForCausalLM). With I(serve_as) set to that class, the module keeps the checkpoint's own
    config as C(config.fm9g.json) (written once, never changed) and writes a mapped
    C(config.json) derived from it (no remote code, the scales kept, the original named inside).
  - With I(serve_as=native) it puts the original back, for a vLLM that knows FM9G itself.
  - Refuses, changing nothing, a config whose shape differs from the catalog's (I(expected)) or that
    lacks a field the target needs (a scale the target would otherwise take as 1).
  - Idempotent; supports check mode.
options:
  model_dir:
    description: Directory holding config.json and the weights (the release's C(current) link).
    type: path
    required: true
  serve_as:
    description: C(native), or the architecture to map to (C(MiniCPMForCausalLM)).
    type: str
    required: true
  expected:
    description: Catalog fields the config must match (hidden_size, num_layers, num_attention_heads,
      num_kv_heads, vocab_size, tie_word_embeddings, intermediate_size).
    type: dict
    default: {}
author: fm9g-deploy
"""

EXAMPLES = r"""
- name: Serve FM9G 4B on upstream vLLM
  fm9g_model_config:
    model_dir: /opt/fm9g/models/fm9g-4b/current
    serve_as: MiniCPMForCausalLM
    expected: {hidden_size: 2560, num_layers: 62, num_kv_heads: 4}
"""

RETURN = r"""
architecture:
  description: The architecture config.json names after this run.
  returned: always
  type: str
original_architecture:
  description: The architecture of the checkpoint's own config.
  returned: always
  type: str
mapped:
  description: Whether config.json is a mapped config.
  returned: always
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_architecture import MappingError, apply_model_config, plan_model_config


def main():
    module = AnsibleModule(
        argument_spec=dict(
            model_dir=dict(type="path", required=True),
            serve_as=dict(type="str", required=True),
            expected=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    model_dir = module.params["model_dir"]
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        module.fail_json(msg="%s has no config.json; install the model first" % model_dir)
    try:
        writes, result = plan_model_config(model_dir, module.params["serve_as"], module.params["expected"])
    except MappingError as exc:
        module.fail_json(msg="%s: %s" % (model_dir, exc))
    except ValueError as exc:  # a config.json that is not JSON
        module.fail_json(msg="%s: config is not valid JSON (%s); reinstall the model release" % (model_dir, exc))
    if writes and not module.check_mode:
        apply_model_config(writes)
    module.exit_json(changed=bool(writes), **result)


if __name__ == "__main__":
    main()
