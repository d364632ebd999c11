"""The sections of scripts/bench.py, one module each; importing a module registers its sections
(`@section(name)` in common.py). scripts/bench.py imports them all."""
