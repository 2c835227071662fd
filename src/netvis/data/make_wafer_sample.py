"""Build the wafer-map sample shipped in ``netvis/assets/wafer-maps-sample/``.

Run from the repository root (re-running writes the same arrays; with the same zlib, the same bytes)::

    python -m netvis.data.make_wafer_sample [--out src/netvis/assets/wafer-maps-sample]

See :func:`netvis.data.wafer.build_wafer_sample` for what it holds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from netvis.data.wafer import WAFER_SAMPLE_DIR, build_wafer_sample

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--out`` and write the sample there."""
    parser = argparse.ArgumentParser(description="Build the wafer-map sample shipped with netvis.")
    parser.add_argument("--out", default=str(WAFER_SAMPLE_DIR), help="folder to write (default: the package's)")
    args = parser.parse_args(argv)
    path = build_wafer_sample(args.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
