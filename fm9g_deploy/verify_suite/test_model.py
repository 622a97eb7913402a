"""The model: the served directory holds config, tokenizer and weights, and is the pinned release."""

from __future__ import annotations

import json

from fm9g_deploy.verify_suite.support import expect, fail

#: The release marker fm9g_model_install writes into releases/<sha256>/.
RELEASE_MARKER = ".fm9g-release.json"
#: Files that hold a tokenizer's vocabulary (fast tokenizer, SentencePiece, BPE or WordPiece).
TOKENIZER_VOCABULARY = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _model_files(host, facts) -> set[str]:
    directory = host.file(f"{facts.model_current}/")
    if not directory.is_directory:
        fail(f"{facts.model_current} is not a directory; run `fm9g-deploy provision`")
    return set(directory.listdir())


def test_model_has_config(host, facts):
    """config.json present"""
    expect(host.file(f"{facts.model_current}/config.json").is_file,
           f"{facts.model_current}/config.json is missing; run `fm9g-deploy provision`")


def test_model_has_tokenizer_files(host, facts):
    """tokenizer files present"""
    files = _model_files(host, facts)
    expect("tokenizer_config.json" in files, f"{facts.model_current}/tokenizer_config.json is missing")
    expect(files & set(TOKENIZER_VOCABULARY),
           f"{facts.model_current} has no tokenizer vocabulary (none of {', '.join(TOKENIZER_VOCABULARY)})")


def test_model_has_weights(host, facts):
    """weights present"""
    files = _model_files(host, facts)
    weights = {name for name in files if name.endswith(".safetensors")
               or (name.startswith("pytorch_model") and name.endswith(".bin"))}
    expect(weights, f"{facts.model_current} has no weights (*.safetensors or pytorch_model*.bin)")
    for index in WEIGHT_INDEXES:
        if index in files:
            shards = set(json.loads(host.file(f"{facts.model_current}/{index}").content_string)["weight_map"].values())
            missing = sorted(shards - files)
            expect(not missing,
                   f"{facts.model_current} lacks weight shard(s) {', '.join(missing[:3])} named in {index}")


def test_model_release_is_the_pinned_tarball(host, facts):
    """release is the pinned tarball (sha256)"""
    resolved = host.run("readlink -f %s", facts.model_current).stdout.strip()
    releases = f"{facts.model_root}/releases/"
    expect(resolved.startswith(releases),
           f"{facts.model_current} does not point into {releases} (it resolves to {resolved or 'nothing'})")
    sha256 = resolved[len(releases):].split("/", 1)[0]
    marker = host.file(f"{releases}{sha256}/{RELEASE_MARKER}")
    expect(marker.exists, f"the current release {sha256[:12]} has no {RELEASE_MARKER}: it was not installed "
           "by `fm9g-deploy provision`")
    recorded = json.loads(marker.content_string).get("sha256")
    expect(recorded == sha256, f"the release marker records {str(recorded)[:12]} in directory {sha256[:12]}")
    expect(recorded == facts.model_sha256,
           f"the installed tarball is {recorded[:12]}, the pin is {facts.model_sha256[:12]}; "
           "run `fm9g-deploy provision`")
