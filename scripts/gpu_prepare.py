"""Carry data to the GPU machine and back together there (``../shared/notes/gpu.md``).

    python scripts/gpu_prepare.py pack [--source ../shared/data] [--cifar]   # here, before the runs
    python scripts/gpu_prepare.py unpack                                     # there, in gpu_run.sh

``pack`` copies MNIST and Fashion-MNIST (the official ``.gz`` files, 41 MB) into ``.device-data/``,
which ``.gitignore`` ignores and the device tool carries when asked (``carry=[".device-data"]``).
With ``--cifar`` it also splits ``cifar10-full.npz`` into parts of at most 55 MB
(``.device-data/cifar-parts/part-N.npy``) and writes their md5 into ``manifest.json``; the parts
go with consecutive runs, one each, because one run carries 64 MiB at most.

``unpack`` checks every part against the manifest, reassembles ``cifar10-full.npz`` into
``/tmp/labkit-data`` beside the MNIST folders, checks each array against the md5 of the original,
and prints that folder (point ``LABKIT_DATA`` at it).
Without parts it prints ``.device-data`` itself. A missing or corrupt part is named, nothing is half
written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".device-data"
PARTS = CARRY / "cifar-parts"
LIMIT = 55 * 2**20


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def pack(source: Path, cifar: bool) -> None:
    for name in ("MNIST", "FashionMNIST"):
        raw = source / name / "raw"
        if not raw.is_dir():
            raise SystemExit(f"{raw} is missing: give --source the folder of ../shared/data.")
        target = CARRY / name / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for gz in sorted(raw.glob("*.gz")):
            shutil.copy2(gz, target / gz.name)
    if cifar:
        npz = source / "cifar10-full.npz"
        if not npz.is_file():
            raise SystemExit(f"{npz} is missing.")
        PARTS.mkdir(parents=True, exist_ok=True)
        arrays = np.load(npz)
        x = arrays["x_train"]
        pieces = {f"x_train_{i}": chunk for i, chunk in enumerate(np.array_split(x, 3))}
        pieces["rest"] = None
        manifest = {"parts": {}, "arrays": {k: hashlib.md5(arrays[k].tobytes()).hexdigest() for k in arrays.files}}
        for name, chunk in pieces.items():
            path = PARTS / f"{name}.npz"
            if chunk is None:
                np.savez(path, y_train=arrays["y_train"], x_test=arrays["x_test"], y_test=arrays["y_test"])
            else:
                np.savez(path, x=chunk)
            if path.stat().st_size > LIMIT:
                raise SystemExit(f"{path} is {path.stat().st_size >> 20} MB, above the 55 MB a run may carry.")
            manifest["parts"][path.name] = _md5(path)
        (PARTS / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"packed into {CARRY} ({sum(p.stat().st_size for p in CARRY.rglob('*') if p.is_file()) >> 20} MB)")


def unpack() -> Path:
    if not (PARTS / "manifest.json").is_file():
        return CARRY
    manifest = json.loads((PARTS / "manifest.json").read_text())
    for name, md5 in manifest["parts"].items():
        path = PARTS / name
        if not path.is_file():
            raise SystemExit(f"CIFAR-10 part {path} has not arrived yet: carry it with a run first.")
        if _md5(path) != md5:
            raise SystemExit(f"CIFAR-10 part {path} is corrupt (md5 differs from the manifest).")
    out = Path(os.environ.get("LABKIT_UNPACK", "/tmp/labkit-data"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("MNIST", "FashionMNIST"):
        if (CARRY / name).is_dir() and not (out / name).exists():
            shutil.copytree(CARRY / name, out / name)
    x = np.concatenate([np.load(PARTS / f"x_train_{i}.npz")["x"] for i in range(3)])
    rest = np.load(PARTS / "rest.npz")
    whole = {"x_train": x, "y_train": rest["y_train"], "x_test": rest["x_test"], "y_test": rest["y_test"]}
    for key, md5 in manifest["arrays"].items():
        if hashlib.md5(whole[key].tobytes()).hexdigest() != md5:
            raise SystemExit(f"the reassembled {key} differs from the original (md5): parts of another pack?")
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **whole)
    os.replace(tmp, out / "cifar10-full.npz")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--cifar", action="store_true")
    sub.add_parser("unpack")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.source, args.cifar)
    else:
        print(unpack())
    return 0


if __name__ == "__main__":
    sys.exit(main())
