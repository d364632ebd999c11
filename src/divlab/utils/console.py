"""Console output of divlab runs: one line per message, printed by the rank-zero process only.

Lightning's `rank_zero_info` goes through the logging module (levels, handlers); divlab's messages are
plain user-facing lines that must appear even when logging is quiet, so they are printed and flushed.
"""


def is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def say(*lines: str) -> None:
    """Print each line (flushed) on rank zero."""
    if is_rank_zero():
        for line in lines:
            print(line, flush=True)
