"""Benchmark: cold and warm builds of a profile's serving image, and the image's size.

    .venv/bin/python benchmarks/bench_image_build.py [--profile cpu] [--smoke]

Cold: `fm9g-deploy image build --no-cache` (every layer rebuilt from the artifact cache, offline).
Warm: the same build again with nothing changed; it should take a small fraction of the cold time
because every layer comes from the engine's layer cache. The ratio warm/cold is printed against
that baseline measured in the same run. Both builds skip the smoke test unless --smoke is given
(then a last, cached build runs it, so the image is left tested). The image replaced by the cold
build is removed when nothing else tags it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fm9g_deploy", *args], capture_output=True, text=True,
                            cwd=PROJECT_ROOT)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"`fm9g-deploy {' '.join(args)}` failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed, result


def manifest_of(result: subprocess.CompletedProcess) -> dict:
    line = next(line for line in result.stderr.splitlines() if line.startswith("manifest: "))
    return json.loads(Path(line.split(": ", 1)[1].strip()).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="smoke-test the image at the end")
    args = parser.parse_args()

    import docker

    from fm9g_deploy.image.render import plan_for_profile

    plan = plan_for_profile(args.profile)
    client = docker.from_env(timeout=300)
    try:
        previous_id = client.images.get(plan.tag).id
    except docker.errors.ImageNotFound:
        previous_id = None

    print(f"profile {args.profile}: image {plan.tag}, build context {plan.context_bytes() / 1e6:.0f} MB "
          f"({len(plan.files)} files)")
    cold_s, cold = cli("image", "build", "--profile", args.profile, "--no-cache", "--no-smoke-test")
    cold_manifest = manifest_of(cold)
    print(f"cold build (--no-cache): {cold_s:7.1f} s")
    warm_s, warm = cli("image", "build", "--profile", args.profile, "--no-smoke-test")
    warm_manifest = manifest_of(warm)
    print(f"warm build (no change):  {warm_s:7.1f} s   ({warm_manifest['cached_steps']} layer steps from the "
          f"cache, image {'unchanged' if warm_manifest['image_id'] == cold_manifest['image_id'] else 'CHANGED'})")
    print(f"warm / cold:             {warm_s / cold_s:7.3f}")
    print(f"image size:              {warm_manifest['size_bytes'] / 1e9:7.2f} GB ({warm_manifest['size_bytes']} bytes)")

    if previous_id and previous_id != cold_manifest["image_id"]:
        replaced = client.images.get(previous_id)
        if not replaced.tags:
            client.images.remove(previous_id)
            print(f"removed the image the cold build replaced ({previous_id[7:19]})")
    if args.smoke:
        smoke_s, smoke = cli("image", "build", "--profile", args.profile)
        print(f"cached build + smoke test: {smoke_s:5.1f} s ({manifest_of(smoke)['smoke_test']['seconds']} s smoke)")
    else:
        print("the image is left untested: run `fm9g-deploy image build` (or pass --smoke) before push/save")
    return 0


if __name__ == "__main__":
    sys.exit(main())
