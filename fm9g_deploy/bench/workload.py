"""The benchmark's prompts: random-ish words of a fixed length, or the lines of a file.

Generated prompts need no tokenizer on the control node: each is ``words`` words drawn with a
seeded random generator from a fixed list, so the same seed gives the same prompts. The load
generator sizes ``words`` from one real request (the server's prompt_tokens count) so prompts
come out close to --input-len tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fm9g_deploy.errors import UserError

_WORDS = (
    "the model serves answers to questions about mountains rivers cities and history while "
    "engineers measure latency throughput memory tokens requests replicas gateways and clusters "
    "a quick brown fox jumps over lazy dogs in the morning light near quiet green hills where "
    "students read books write notes share ideas build tools test systems deploy services watch "
    "logs fix bugs learn languages explain rotary position encoding attention layers weights "
    "training data inference batch queue cache kernel thread process network storage disk file"
).split()


def generated_prompts(count: int, words: int, seed: int) -> list[str]:
    """``count`` prompts of ``words`` words each; deterministic for a seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(max(1, words))) for _ in range(count)]


def load_prompts_file(path: Path) -> list[str]:
    """Prompts from FILE: JSON Lines with a "prompt" field (.jsonl), else one prompt per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompts file {path} not found; pass an existing file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"prompts file {path}: cannot read it ({exc}); pass a UTF-8 text file") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"prompts file {path}, line {number}: not JSON ({exc.msg}); "
                                'write one {"prompt": "..."} object per line') from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UserError(f'prompts file {path}, line {number}: needs a "prompt" string')
            prompts.append(record["prompt"])
    else:
        prompts = [line.strip() for line in lines]
    prompts = [prompt for prompt in prompts if prompt.strip()]
    if not prompts:
        raise UserError(f"prompts file {path} has no prompts; put one prompt per line")
    return prompts


def take(prompts: list[str], count: int) -> list[str]:
    """``count`` prompts, cycling through ``prompts`` when there are fewer."""
    return [prompts[i % len(prompts)] for i in range(count)]
