"""Data-mixing methods as Lightning callbacks for `task=mix_lm`, one file each (`mixer=<name>`)."""
