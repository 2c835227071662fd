"""Build the Fashion-MNIST sample shipped in ``netvis/assets/fashion-mnist-sample/``.

Run from the repository root (re-running gives byte-identical files)::

    python -m netvis.data.make_sample                      # reads the full set from the usual places
    python -m netvis.data.make_sample --source /usr/share/datasets/fashion-mnist \
        --out src/netvis/assets/fashion-mnist-sample

The sample holds, per class, the ``--train-per-class`` (200) training and ``--test-per-class`` (100) test
images whose keys ``sha256(f"{seed}:{split}:{index}")`` are smallest: a fixed pseudo-random choice that
depends on no random number generator's version. Chosen images keep their original order. The folder
gets the four IDX ``.gz`` files, ``meta.json`` (the original ``indices`` of every sample image, the
seed, SHA-256 sums of the source and sample files, class names), ``LICENSE`` (Fashion-MNIST's MIT
licence) and ``README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netvis.data.fashion_mnist import FASHION_MNIST_CLASSES, SAMPLE_DIR, find_fashion_mnist, find_idx_files
from netvis.data.idx import read_idx_pair, write_idx

__all__ = ["choose", "build_sample", "main"]

SEED = 0
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

LICENSE = """\
The images and labels in this folder are a subset of Fashion-MNIST
(https://github.com/zalandoresearch/fashion-mnist), distributed under the MIT licence:

The MIT License (MIT)

Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README = """\
# Fashion-MNIST sample

A class-balanced subset of Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, "Fashion-MNIST: a Novel
Image Dataset for Benchmarking Machine Learning Algorithms"), shipped with netvis so that examples,
documentation and tests run without downloading anything.

| split | images | per class | files |
|-------|--------|-----------|-------|
| train | {n_train} | {train_per_class} | `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz` |
| test  | {n_test} | {test_per_class} | `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz` |

The files are IDX (the MNIST format), gzip-compressed, 28x28 `uint8` grayscale, labels 0-9:
{classes}.

Load it with `netvis.data.load("fashion-mnist-sample", "train")` (or `"test"`).

`meta.json` records, for every sample image in file order, its index in the original Fashion-MNIST
split (`indices`), plus SHA-256 sums of the original and the sample files. Images were chosen per
class as those with the smallest `sha256("{seed}:<split>:<index>")` and kept in their original order.
Rebuild (byte-identical) with:

    python -m netvis.data.make_sample --source /usr/share/datasets/fashion-mnist

Licence: MIT, Copyright (c) 2017 Zalando SE; see `LICENSE` in this folder.
"""


def choose(labels: np.ndarray, per_class: int, *, split: str, seed: int = SEED) -> np.ndarray:
    """Pick ``per_class`` indices of every class, deterministically.

    Args:
        labels: ``(N,)`` integer labels.
        per_class: Images per class.
        split: Split name, part of the hash key (so train and test choices are independent).
        seed: Part of the hash key.

    Returns:
        Sorted ``int64`` indices, ``per_class`` times the number of classes.
    """
    chosen: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} images, fewer than {per_class}")
        keys = [hashlib.sha256(f"{seed}:{split}:{i}".encode()).digest() for i in members]
        order = sorted(range(len(members)), key=keys.__getitem__)
        chosen.extend(int(members[k]) for k in order[:per_class])
    return np.array(sorted(chosen), dtype=np.int64)


def _dump(meta: dict) -> str:
    """JSON with one line per index list (instead of one line per index)."""
    lists = {split: info.pop("indices") for split, info in meta["splits"].items()}
    for split in lists:
        meta["splits"][split]["indices"] = f"@indices:{split}@"
    text = json.dumps(meta, indent=1)
    for split, indices in lists.items():
        text = text.replace(f'"@indices:{split}@"', json.dumps(indices))
        meta["splits"][split]["indices"] = indices
    return text + "\n"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_sample(
    source: str | Path,
    out: str | Path = SAMPLE_DIR,
    *,
    train_per_class: int = 200,
    test_per_class: int = 100,
    seed: int = SEED,
) -> dict:
    """Write the sample folder from the full Fashion-MNIST files.

    Args:
        source: Folder with the four original IDX files.
        out: Sample folder to (re)write.
        train_per_class: Training images per class.
        test_per_class: Test images per class.
        seed: Part of the selection's hash key.

    Returns:
        The metadata written to ``meta.json``.
    """
    source, out = Path(source), Path(out)
    meta: dict = {
        "name": "fashion-mnist-sample",
        "classes": list(FASHION_MNIST_CLASSES),
        "seed": seed,
        "selection": "per class, smallest sha256(f'{seed}:{split}:{index}'), original order",
        "licence": "MIT, Copyright (c) 2017 Zalando SE",
        "source": "https://github.com/zalandoresearch/fashion-mnist",
        "splits": {},
    }
    per_class = {"train": train_per_class, "test": test_per_class}
    for split, (images_name, labels_name) in FILES.items():
        files = find_idx_files(source, split)
        if files is None:
            raise FileNotFoundError(f"no {split} IDX files in {source}")
        images, labels = read_idx_pair(*files, num_classes=len(FASHION_MNIST_CLASSES))
        indices = choose(labels, per_class[split], split=split, seed=seed)
        write_idx(out / images_name, images[indices])
        write_idx(out / labels_name, labels[indices])
        meta["splits"][split] = {
            "count": len(indices),
            "per_class": per_class[split],
            "source_files": {p.name: _sha256(p) for p in files},
            "files": {name: _sha256(out / name) for name in (images_name, labels_name)},
            "indices": indices.tolist(),
        }
    (out / "meta.json").write_text(_dump(meta), encoding="utf-8")
    (out / "LICENSE").write_text(LICENSE, encoding="utf-8")
    (out / "README.md").write_text(
        README.format(
            n_train=meta["splits"]["train"]["count"],
            n_test=meta["splits"]["test"]["count"],
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            classes=", ".join(f"{k} {c}" for k, c in enumerate(FASHION_MNIST_CLASSES)),
            seed=seed,
        ),
        encoding="utf-8",
    )
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m netvis.data.make_sample [--source DIR] [--out DIR] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=None, help="folder of the full Fashion-MNIST IDX files"
    )
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help="sample folder to write")
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    source = args.source or find_fashion_mnist()
    if source is None:
        parser.error("Fashion-MNIST not found; pass --source (apt-get install dataset-fashion-mnist)")
    meta = build_sample(
        source,
        args.out,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
    )
    for split, info in meta["splits"].items():
        print(f"{split}: {info['count']} images -> {args.out}")


if __name__ == "__main__":
    main()
