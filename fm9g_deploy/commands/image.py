"""`fm9g-deploy image build|push|save|list`: container images of a stack profile."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Build a container image of the same pinned stack a provisioned host gets: the profile's lock,
installed offline from the local artifact cache (the build has no network), a non-root user, and
an entry point that runs vLLM's OpenAI server with the settings of the systemd replicas (FM9G_*
variables). The API key is never in the image: mount it at /run/secrets/fm9g_api_key or set
VLLM_API_KEY. The model is mounted read-only at /model, or baked in with --bake-model.

`build` tags the image fm9g-vllm:<profile>-<lock hash>, writes a manifest and smoke-tests it
(run, /v1/models, one completion, stop). `push` and `save` ship only an image that passed.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("image", help="build, smoke-test, push or save serving images",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="image_action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="build the profile's image offline and smoke-test it",
                               description="Build the image from the lock and the artifact cache, write its "
                                           "manifest, then smoke-test it. Prints the image tag.")
    _add_selection(build)
    build.add_argument("--base", metavar="IMAGE",
                       help="base image (default: the project's Debian rootfs for cpu, the pinned CUDA runtime "
                            "image for cuda profiles)")
    build.add_argument("--no-smoke-test", action="store_true",
                       help="skip the smoke test (where the image cannot run, e.g. no GPU); push/save refuse it")
    build.add_argument("--smoke-timeout", type=int, default=600, metavar="S",
                       help="seconds the server may take to serve in the smoke test (default: 600)")
    build.add_argument("--no-cache", action="store_true",
                       help="rebuild every layer (default: reuse the engine's layer cache)")
    build.add_argument("--dry-run", action="store_true",
                       help="print the base, build args, tag and context files; build nothing")
    build.set_defaults(handler=run_build)

    push = actions.add_parser("push", help="push a smoke-tested image to a registry",
                              description="Tag the profile's tested image under the registry and push it.")
    _add_selection(push)
    push.add_argument("--registry", required=True, metavar="HOST[:PORT][/NS]", help="registry to push to")
    push.set_defaults(handler=run_push)

    save = actions.add_parser("save", help="write a smoke-tested image to a tarball for `docker load`",
                              description="Write the profile's tested image to a tarball (with a manifest "
                                          "and its sha256 beside it) to carry to an air-gapped host.")
    _add_selection(save)
    save.add_argument("--output", "-o", type=Path, default=Path("."), metavar="PATH",
                      help="tarball path or directory (default: the current directory)")
    save.set_defaults(handler=run_save)

    listing = actions.add_parser("list", help="the images built here and their smoke tests",
                                 description="List the manifests of images built here.")
    listing.set_defaults(handler=run_list)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", required=True, metavar="NAME", help="stack profile (cpu, cuda121, cuda130)")
    parser.add_argument("--model", metavar="NAME",
                        help="model the image is smoke-tested with and its install set chosen by "
                             "(default: tiny-random for cpu, fm9g-4b for cuda profiles)")
    parser.add_argument("--bake-model", action="store_true",
                        help="copy the model into the image (air-gapped sites) instead of mounting it")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="artifact cache (default: the user cache)")


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _plan(args, base: str | None = None):
    from fm9g_deploy.image.render import plan_for_profile

    return plan_for_profile(args.profile, cache_dir=args.cache_dir, model=args.model,
                            bake_model=args.bake_model, base=base)


def run_build(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from fm9g_deploy.errors import OperationFailed, UserError
    from fm9g_deploy.image import build as builder
    from fm9g_deploy.image.manifest import manifest_path, read_manifest, write_manifest
    from fm9g_deploy.paths import state_dir

    if args.smoke_timeout < 10:
        raise UserError(f"--smoke-timeout {args.smoke_timeout} is too short; give the server at least 10 s")
    plan = _plan(args, base=args.base)
    console = _console()
    if args.dry_run:
        _print_plan(plan)
        return 0
    from fm9g_deploy.sandbox.engine import docker_client

    builder.require_complete(plan)  # before the engine is touched: nothing to build from
    client = docker_client()
    builder.ensure_base(client, plan, console)
    previous = read_manifest(plan.tag) or {}
    # Beside the cache, so the wheels can be hard links rather than copies.
    scratch_parent = plan.cache_root.parent if plan.cache_root and plan.cache_root.parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="fm9g-image-context-", dir=scratch_parent) as scratch:
        context = Path(scratch) / "context"
        context.mkdir()
        builder.assemble_context(plan, context)
        log_path = state_dir() / "images" / "logs" / (plan.tag.replace(":", "_") + ".log")
        result = builder.build(client, plan, context, console, log_path, nocache=args.no_cache)
    unchanged = previous.get("image_id") == result.image_id
    console.print(f"built {plan.tag} ({result.image_id[7:19]}{', unchanged' if unchanged else ''}): "
                  f"{result.size_bytes / 1e9:.2f} GB in {result.seconds:.0f}s, {result.cached_steps} layer steps "
                  f"from the cache")
    manifest = {
        "image": plan.tag, "image_id": result.image_id, "size_bytes": result.size_bytes,
        "profile": plan.profile, "install_set": plan.set_name, "lock_sha256": plan.lock_sha256,
        "base": plan.base, "baked_model": plan.baked_model, "build_seconds": round(result.seconds, 1),
        "cached_steps": result.cached_steps, "steps": result.steps,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "smoke_test": None,
    }
    write_manifest(manifest)
    if args.no_smoke_test:
        if unchanged and (previous.get("smoke_test") or {}).get("passed"):
            # The very image that passed before: its result still holds.
            manifest["smoke_test"] = previous["smoke_test"]
            write_manifest(manifest)
            console.print(f"smoke test skipped: this image passed it at {previous['smoke_test'].get('at')}")
        else:
            console.print(f"smoke test skipped: push and save will refuse {plan.tag}")
        console.print(f"manifest: {manifest_path(plan.tag)}")
        print(plan.tag)
        return 0
    smoke = _smoke(client, plan, args, console)
    manifest["smoke_test"] = {**smoke.to_dict(), "model": (args.model or _default_model(plan.profile)),
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_manifest(manifest)
    console.print(f"manifest: {manifest_path(plan.tag)}")
    if not smoke.passed:
        for line in smoke.logs_tail[-8:]:
            console.print(f"  | {line}", markup=False)
        raise OperationFailed(f"smoke test of {plan.tag} failed: {smoke.problem}")
    served = f", served in {smoke.dtype}" if smoke.dtype else ""
    console.print(f"smoke test passed in {smoke.seconds:.0f}s (completion: {smoke.completion!r}{served})", markup=False)
    print(plan.tag)
    return 0


def _default_model(profile_name: str) -> str:
    from fm9g_deploy.image.render import default_model
    from fm9g_deploy.profiles import load_profile

    return default_model(load_profile(profile_name))


def _smoke(client, plan, args, console):
    import tempfile

    from fm9g_deploy.artifacts.cache import Cache, resolve_cache_dir
    from fm9g_deploy.catalog import get_model
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.image.build import map_for_profile, unpack_model
    from fm9g_deploy.image.smoke import run_smoke_test

    model = args.model or _default_model(plan.profile)
    spec = get_model(model)
    settings = dict(served_name="9g", accelerator=plan.accelerator, max_model_len=spec.max_model_len,
                    timeout_s=args.smoke_timeout, console=console)
    if plan.baked_model:
        return run_smoke_test(client, plan.tag, model_dir=None, **settings)
    cache = Cache(resolve_cache_dir(args.cache_dir, None))
    pin = cache.pins().get(model)
    if not pin or not cache.has(pin["sha256"], pin["filename"]):
        raise UserError(f"the {model} tarball is not in the artifact cache {cache.root}; run `fm9g-deploy artifacts "
                        f"fetch --profile {plan.profile} --model {model}`, or pass --no-smoke-test")
    with tempfile.TemporaryDirectory(prefix="fm9g-smoke-model-") as scratch:
        model_dir = unpack_model(cache.path_for(pin["sha256"], pin["filename"]), Path(scratch))
        map_for_profile(model_dir, plan.profile, model)
        return run_smoke_test(client, plan.tag, model_dir=model_dir, **settings)


def _print_plan(plan) -> None:
    from fm9g_deploy.image.render import CONTEXT_SOURCE

    wheels = [n for n in plan.files if n.startswith("wheels/")]
    print(f"image:      {plan.tag}")
    print(f"dockerfile: {CONTEXT_SOURCE / 'Dockerfile'}")
    print(f"base:       {plan.base}" + ("  (the project's Debian rootfs, made here)" if plan.base_is_local_rootfs else ""))
    print("build args:")
    for key, value in plan.buildargs.items():
        print(f"  {key}={value}")
    print(f"context:    {len(plan.context_listing)} entries, {len(wheels)} wheels, "
          f"{sum(p.stat().st_size for p in plan.files.values() if p.exists()) / 1e6:.0f} MB in the cache")
    for name in plan.context_listing:
        if not name.startswith("wheels/") or name == "wheels/requirements.txt":
            print(f"  {name}")
    print(f"  wheels/*.whl ({len(wheels)} files)")
    if plan.missing:
        print(f"missing from the artifact cache: {len(plan.missing)} file(s), first {plan.missing[0]}; "
              f"run `fm9g-deploy artifacts fetch --profile {plan.profile}` before building")


def _build_command(args) -> str:
    """The `image build` line that makes the image these arguments select."""
    parts = ["fm9g-deploy image build", f"--profile {args.profile}"]
    if args.model:
        parts.append(f"--model {args.model}")
    if args.bake_model:
        parts.append("--bake-model")
    if args.cache_dir:
        parts.append(f"--cache-dir {args.cache_dir}")
    return " ".join(parts)


def run_push(args: argparse.Namespace) -> int:
    from fm9g_deploy.image.manifest import tested_image
    from fm9g_deploy.image.transfer import push, registry_reference
    from fm9g_deploy.sandbox.engine import docker_client

    plan = _plan(args)
    registry_reference(args.registry, plan.tag)  # a bad address is refused before the engine is asked
    client = docker_client()
    _, image = tested_image(client, plan.tag, _build_command(args))
    console = _console()
    reference = push(client, image, plan.tag, args.registry, console)
    console.print(f"pushed {reference}")
    print(reference)
    return 0


def run_save(args: argparse.Namespace) -> int:
    from fm9g_deploy.image.manifest import tested_image
    from fm9g_deploy.image.transfer import save
    from fm9g_deploy.sandbox.engine import docker_client

    plan = _plan(args)
    client = docker_client()
    manifest, image = tested_image(client, plan.tag, _build_command(args))
    console = _console()
    path, sha256, size = save(image, plan.tag, args.output, manifest, console)
    console.print(f"saved {plan.tag}: {size / 1e9:.2f} GB, sha256 {sha256}")
    console.print(f"on the target host: sha256sum {path.name} && docker load -i {path.name}")
    print(path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    import json

    from fm9g_deploy.image.manifest import manifests_dir

    found = sorted(manifests_dir().glob("*.json")) if manifests_dir().is_dir() else []
    if not found:
        print("no image built here yet; run `fm9g-deploy image build --profile cpu`")
        return 0
    for path in found:
        data = json.loads(path.read_text(encoding="utf-8"))
        smoke = data.get("smoke_test") or {}
        state = "passed" if smoke.get("passed") else ("FAILED" if smoke else "not tested")
        print(f"{data['image']}  {data.get('size_bytes', 0) / 1e9:.2f} GB  smoke test {state}  built {data.get('built_at')}")
    return 0
