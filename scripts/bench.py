#!/usr/bin/env python
"""divlab benchmarks: speed and memory targets, one named section each.

    python scripts/bench.py                        # every section
    python scripts/bench.py --only divergences     # one section (repeatable)
    python scripts/bench.py --only divergences --quick   # small smoke sizes

Each section writes outputs/bench/<name>.json and outputs/bench/<name>.md (a Markdown table)
and prints the table. To add a section, write `def bench_x(args) -> (payload, markdown)` and
decorate it with `@section("x")` in a module of
scripts/bench_sections/ that this script imports. No test asserts on these timings.

Peak memory: on CUDA, torch.cuda.max_memory_allocated() above the inputs; on CPU, each
configuration runs in a fresh subprocess and reports its peak resident set size (getrusage
ru_maxrss) minus the resident size once its inputs exist, with glibc's mmap threshold pinned
(MALLOC_MMAP_THRESHOLD_) so that large tensors are returned to the OS when freed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the bench_sections package

from bench_sections import divergences, kd_overhead, lm_distill, lm_topk  # noqa: E402, F401  (importing registers the sections)
from bench_sections.common import OUT, SECTIONS  # noqa: E402
from bench_sections.token_worker import token_worker  # noqa: E402

# ============================================================================= main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=sorted(SECTIONS), help="run only this section (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default outputs/bench)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    for key in ("method", "device"):
        parser.add_argument(f"--{key}", help=argparse.SUPPRESS)
    for key in ("vocab", "tokens", "hidden", "repeats"):
        parser.add_argument(f"--{key}", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "token":
        print(
            json.dumps(
                token_worker(args.method, args.vocab, args.tokens, args.hidden, args.repeats, args.device)
            )
        )
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(SECTIONS):
        print(f"== {name}", flush=True)
        payload, markdown = SECTIONS[name](args)
        (args.out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(markdown + "\n")
        print(markdown, flush=True)
        print(f"(wrote {args.out / name}.json and .md)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
