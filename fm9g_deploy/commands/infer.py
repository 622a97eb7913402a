"""`fm9g-deploy infer`: the guide's offline inference (transformers or vLLM) on one host."""

from __future__ import annotations

import argparse
from pathlib import Path

from fm9g_deploy.commands.common import add_inventory_args

DESCRIPTION = """\
Run the guide's offline inference on one provisioned host, inside its env and with its
installed model, and print the answers:

  --engine transformers  AutoModelForCausalLM.generate() with the chat template applied
                         (bf16 on a GPU; the model's own dtype on a CPU), one prompt at a time
                         (guide defaults: greedy, up to 256 new tokens)
  --engine vllm          vLLM's offline LLM.generate() over all prompts in one batch, with the
                         planned tensor-parallel size for the host and the profile's engine
                         options (guide defaults: temperature 0.8, top_p 0.95, 100 tokens)

The runner script is copied to the host and run through Ansible with the env's Python; the
request goes to it on standard input and its JSON result comes back. On a GPU host both engines
need GPU memory that the served replicas hold: stop them first (`fm9g-deploy stop`) or use a
host that does not serve. On a CPU host vLLM gets the config's cpu_kvcache_space_gib and the
profile's engine options (--enforce-eager). Leaves nothing behind on the host.
"""

ENGINES = ("transformers", "vllm")
MAX_PROMPTS = 256


def register(subparsers) -> None:
    parser = subparsers.add_parser("infer", help="offline inference on a host (transformers or vLLM)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inventory_args(parser)
    parser.add_argument("--host", required=True, metavar="HOST", help="the inventory host to run on")
    parser.add_argument("--engine", required=True, choices=ENGINES, help="which of the guide's ways to use")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", metavar="TEXT",
                         help="a prompt (repeat for more); each is sent as one user turn")
    prompts.add_argument("--prompts-file", type=Path, metavar="FILE",
                         help="prompts, one per line, or .jsonl with a \"prompt\" field")
    parser.add_argument("--max-tokens", type=int, metavar="N",
                        help="most new tokens per answer (default: the guide's, 256 / 100)")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="sampling temperature (default: greedy for transformers, 0.8 for vLLM)")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling (default: 0.95 for vLLM)")
    parser.add_argument("--seed", type=int, metavar="S", help="sampling seed, for repeatable answers")
    parser.add_argument("--timeout", type=int, default=1800, metavar="SECONDS",
                        help="stop the run on the host after this long (default: 1800)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from fm9g_deploy.commands.common import config_for, inventory_path
    from fm9g_deploy.inference import build_request, check_host, read_prompts, run_on_host

    inventory = inventory_path(args)
    config = config_for(args)
    check_host(inventory, args.host)
    prompts = read_prompts(args.prompt, args.prompts_file, MAX_PROMPTS)
    request = build_request(args, config, inventory, prompts)
    result = run_on_host(inventory, args.host, config, request, timeout_s=args.timeout)
    if args.json:
        print(json.dumps({"host": args.host, **result}, indent=2, ensure_ascii=False))
    else:
        print_results(args.host, result)
    return 0


def print_results(host: str, result: dict) -> None:
    print(f"{host}: {result['engine']} on {result['device']} ({result['dtype']}), "
          f"model loaded in {result['load_seconds']:.1f} s, generated in {result['generate_seconds']:.1f} s")
    for number, item in enumerate(result["results"], 1):
        print(f"\n[{number}] {item['prompt']}")
        print(item["text"].strip() or "(empty answer)")
