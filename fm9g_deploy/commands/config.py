"""`fm9g-deploy config check|show`: validate the deployment config before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from fm9g_deploy.commands.common import add_config_arg


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", help="validate or show the deployment config (fm9g.yml)",
        description="Validate the deployment config, or print it with every default filled in. "
                    "Secrets are masked.")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    for name, handler, text in (
        ("check", run_check, "validate the config; one line per problem, exit 2 if it is wrong"),
        ("show", run_show, "print the config with all defaults, as YAML (secrets masked)"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("-i", "--inventory", type=Path, metavar="INVENTORY",
                            help="inventory whose directory holds fm9g.yml (when --config is not given)")
        add_config_arg(action)
        action.set_defaults(handler=handler)


def run_check(args: argparse.Namespace) -> int:
    from fm9g_deploy.commands.common import config_for

    config = config_for(args)
    print(f"config ok: model {config.model.name}, profile {config.profile}, "
          f"served as {config.serving.served_model_name!r} on port {config.serving.port}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    import yaml

    from fm9g_deploy.commands.common import config_for

    config = config_for(args)
    data = config.model_dump(mode="json")
    if data["serving"].get("api_key"):
        data["serving"]["api_key"] = "********"
    print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    return 0
