"""``make gpu-check``: the one prepared GPU check (docs/gpu-check.md). Standard library only up to the hand-over.

Three subcommands:

- ``prepare`` (here, with PyPI): download every wheel the GPU machine lacks into ``.whl/`` and cut the ones
  over the carry limit into parts, one folder per device call (``.whl/p1`` .. ``.whl/pN``), with a manifest of
  sizes and SHA-256s. It prints the carry list of each call.
- ``parts`` (there, in each carrying call): which parts have arrived, which are still missing.
- ``run`` (there): join and verify the parts, ``pip install --no-index --no-deps --target`` every carried
  wheel, make ``segrt`` importable from this source tree, build the native kernels, then hand over to
  :mod:`gpu_check_run` in a fresh interpreter whose ``PYTHONPATH`` holds the carried packages. ``--self-test``
  runs the same machinery on the CPU provider alone (what CI runs).

Bad arguments and missing parts end with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "gpu-check-wheels.json"
#: One device call carries 64 MiB, the working tree (~7 MB) included: parts stay under this many bytes.
PART_BYTES = 52_000_000
CARRY_LIMIT = 64 * 2**20
#: What the GPU machine (KINDS.md, nvidia-h200: Python 3.12, torch 2.11, torchvision, onnx, onnxscript,
#: scikit-image, timm present) lacks for export and the CUDA provider. Pure-Python wheels except the first.
WHEELS = ("onnxruntime-gpu==1.31.1", "segmentation-models-pytorch==0.6.0", "segment-anything==1.0",
          "onnxslim==0.1.98")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
STAGE_ENV = "SEGRT_GPU_CHECK_STAGE"


class CheckError(Exception):
    """A bad argument or a broken carry: one line, exit code 2 (this module runs before segrt imports)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + line
        raise CheckError(message)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# -- prepare (here) ---------------------------------------------------------------------------------------
def split_wheels(src: Path, dest: Path, part_bytes: int = PART_BYTES) -> dict:
    """Cut every wheel in ``src`` into ``dest/p1..pN``: parts of the large ones spread one per folder, the
    small wheels and the manifest in the last folder (which then has the most room). Returns the manifest."""
    wheels = sorted(src.glob("*.whl"))
    if not wheels:
        raise CheckError(f"no wheels in {src}; run `python3 benchmarks/gpu_check.py prepare` first")
    for stale in dest.glob("p[0-9]*"):  # a previous cut with another part count
        if stale.is_dir():
            shutil.rmtree(stale)
    entries, chunks = [], []
    for whl in wheels:
        size = whl.stat().st_size
        count = -(-size // part_bytes) if size > part_bytes else 0
        entries.append({"file": whl.name, "size": size, "sha256": sha256(whl), "parts": []})
        if count:
            step = -(-size // count)
            chunks += [(entries[-1], whl, k, k * step, min(step, size - k * step)) for k in range(count)]
    folders = max(1, len(chunks))
    for k, (entry, whl, idx, offset, length) in enumerate(chunks):
        out = dest / f"p{k + 1}" / f"{whl.name}.part{idx:02d}"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(whl, "rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
        out.write_bytes(data)
        entry["parts"].append({"file": f"p{k + 1}/{out.name}", "size": length,
                               "sha256": hashlib.sha256(data).hexdigest()})
    last = dest / f"p{folders}"
    last.mkdir(parents=True, exist_ok=True)
    for entry, whl in zip(entries, wheels):
        if not entry["parts"]:
            target = last / whl.name
            if target.resolve() != whl.resolve():
                target.write_bytes(whl.read_bytes())
            entry["whole"] = f"p{folders}/{whl.name}"
    manifest = {"schema": 1, "part_bytes": part_bytes, "folders": [f"p{k + 1}" for k in range(folders)],
                "wheels": entries}
    _write_atomic(last / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def cmd_prepare(args: argparse.Namespace) -> int:
    download = args.wheels / "download"
    download.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(download), *WHEELS]
    if subprocess.run(cmd).returncode:
        raise CheckError("pip download failed (see above); PyPI must be reachable from here")
    keep = {w.split("==")[0].replace("-", "_").lower() for w in WHEELS}
    for stale in download.glob("*.whl"):
        if stale.name.split("-")[0].lower() not in keep:
            stale.unlink()
    manifest = split_wheels(download, args.wheels, args.part_bytes)
    for entry in manifest["wheels"]:
        print(f"{entry['file']}: {entry['size'] / 1e6:.1f} MB" + (f" in {len(entry['parts'])} parts" if entry["parts"] else ""))
    tree = tree_bytes()
    for k, folder in enumerate(manifest["folders"], 1):
        size = sum(f.stat().st_size for f in (args.wheels / folder).iterdir())
        what = "then the check" if k == len(manifest["folders"]) else "nothing else"
        over = " OVER the limit: re-run with a smaller --part-bytes" if size + tree > CARRY_LIMIT else ""
        print(f"device call {k}: carry [\".whl/{folder}\"] ({size / 1e6:.1f} MB + the tree's {tree / 1e6:.1f} MB of "
              f"{CARRY_LIMIT / 1e6:.1f} MB), {what}{over}")
    return 0


def tree_bytes() -> int:
    """What travels with every call besides the carried folder: tracked and untracked-not-ignored files."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    files = {ROOT / name.decode() for name in out.split(b"\0") if name}
    return sum(f.stat().st_size for f in files if f.is_file())


# -- parts / install (there) ------------------------------------------------------------------------------
def read_manifest(wheels: Path) -> dict | None:
    found = sorted(wheels.glob(f"p*/{MANIFEST}"))
    if not found:
        return None
    try:
        return json.loads(found[-1].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckError(f"{found[-1]} is unreadable ({exc}); re-send it") from None


def missing_parts(wheels: Path, manifest: dict) -> list[str]:
    """Folders whose parts are absent or corrupt (a cold machine loses what earlier calls carried)."""
    bad = []
    for entry in manifest["wheels"]:
        for item in entry["parts"] + ([{"file": entry["whole"], "sha256": entry["sha256"]}] if "whole" in entry else []):
            path = wheels / item["file"]
            if not path.is_file() or sha256(path) != item["sha256"]:
                bad.append(item["file"].split("/")[0])
    return sorted(set(bad), key=lambda f: int(f[1:]))


def cmd_parts(args: argparse.Namespace) -> int:
    have = sorted(p.name for p in args.wheels.glob("p*") if p.is_dir())
    manifest = read_manifest(args.wheels)
    if manifest is None:
        print(f"gpu-check: parts here: {', '.join(have) or 'none'} (the manifest comes with the last folder)")
        return 0
    missing = missing_parts(args.wheels, manifest)
    print(f"gpu-check: parts here: {', '.join(have)}; missing or corrupt: {', '.join(missing) or 'none'}")
    return 2 if missing else 0


def install_carried(wheels: Path, site: Path, scratch: Path) -> list[str]:
    """Join and verify the carried parts, then install every wheel into ``site``. Returns the wheel names."""
    manifest = read_manifest(wheels)
    if manifest is None:
        raise CheckError(f"no {MANIFEST} under {wheels}/p*/: carry the wheel folders `prepare` made")
    missing = missing_parts(wheels, manifest)
    if missing:
        raise CheckError(f"carried wheel folders missing or corrupt: {', '.join(missing)} (the machine went cold "
                         "between calls?); carry them again, then run again")
    scratch.mkdir(parents=True, exist_ok=True)
    files = []
    for entry in manifest["wheels"]:
        if "whole" in entry:
            files.append(wheels / entry["whole"])
            continue
        out = scratch / entry["file"]
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "wb") as fh:
            for item in entry["parts"]:
                fh.write((wheels / item["file"]).read_bytes())
        if sha256(tmp) != entry["sha256"]:
            raise CheckError(f"{entry['file']} joined from its parts does not match its SHA-256; re-run prepare")
        tmp.replace(out)
        files.append(out)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site), *map(str, files)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckError(f"pip could not install the carried wheels: {tail}")
    return [f.name for f in files]


def segrt_shim(home: Path) -> Path:
    """A folder that makes this source tree importable as ``segrt.*`` (the namespace pyproject installs)."""
    pkg = home / "segrt"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in ("export", "runtime", "benchmarks"):
        link = pkg / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=True)
    return home


def build_native() -> tuple[subprocess.Popen | None, str]:
    """Start compiling cpp_ext/native.cpp for this interpreter (g++, pyproject's flags) beside runtime/, in the
    background; or say why not (then the runtime uses the NumPy twin)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out = ROOT / "runtime" / f"_native{suffix}"
    if out.is_file():
        return None, f"already built ({out.name})"
    cmd = ["g++", "-O3", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-pthread",
           f"-I{sysconfig.get_paths()['include']}", str(ROOT / "cpp_ext" / "native.cpp"), "-o", str(out)]
    try:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), "building"
    except OSError as exc:
        return None, f"not built: g++ {exc.strerror or exc}; the NumPy twin is used"


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cmd_run(args: argparse.Namespace) -> int:
    if os.environ.get(STAGE_ENV) != "2":
        return _stage_one(args)
    from segrt.benchmarks.gpu_check_run import main_run

    return main_run(args)


def _stage_one(args: argparse.Namespace) -> int:
    """Install what was carried, make segrt importable, then re-execute with that on PYTHONPATH."""
    t0 = time.perf_counter()
    paths, installed = [], []
    native, status = (None, "not built (--self-test / --no-native)") if args.self_test or args.no_native else build_native()
    if not args.self_test and args.wheels.is_dir() and any(args.wheels.glob("p*")):
        installed = install_carried(args.wheels, args.site, args.work / "wheels")
        paths.append(str(args.site))
    if not _importable("segrt.runtime"):
        paths.append(str(segrt_shim(args.work / "src")))
    if native is not None:
        try:
            rc = native.wait(timeout=120)
            status = "built" if rc == 0 else f"g++ failed: {native.stderr.read().decode()[-200:].strip()}"
        except subprocess.TimeoutExpired:
            native.kill()
            status = "g++ took over 120 s; the NumPy twin is used"
    env = dict(os.environ, **{STAGE_ENV: "2", "SEGRT_GPU_CHECK_SETUP": json.dumps(
        {"wheels": installed, "site": str(args.site) if installed else None, "native_build": status,
         "setup_s": round(time.perf_counter() - t0, 1)})})
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    print(f"gpu-check: setup {time.perf_counter() - t0:.0f} s ({len(installed)} carried wheels; native kernels {status})",
          flush=True)
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]] if args.argv is None
                          else [sys.executable, str(Path(__file__).resolve()), *args.argv], env=env).returncode


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpu_check.py", description="segrt's prepared GPU check (docs/gpu-check.md)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    prep = sub.add_parser("prepare", help="here: download and split the wheels the GPU machine needs")
    prep.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    prep.add_argument("--part-bytes", type=_positive, default=PART_BYTES)
    parts = sub.add_parser("parts", help="there: which carried wheel parts have arrived")
    parts.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    run = sub.add_parser("run", help="there: install the carried wheels and run the check")
    run.add_argument("--out", type=Path, required=True, help="folder for the JSON, Markdown and log (e.g. $OUT)")
    run.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    run.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where the carried wheels are installed")
    run.add_argument("--work", type=Path, default=Path("/tmp/segrt-gpu-check"), help="bundles, variants, scratch")
    run.add_argument("--budget", type=_positive, default=420, help="seconds from the start, setup included: no "
                     "step starts after it and timing loops stop at it (default 420: the run stays under 8 minutes)")
    run.add_argument("--commit", default=None, help="the commit being checked (default: git, where there is one)")
    run.add_argument("--families", type=_families, default=None, help="comma-separated subset of unet,deeplabv3plus,"
                     "maskrcnn,sam (default: all)")
    run.add_argument("--self-test", action="store_true", help="CPU provider only, on the PP-OCR detector (CI)")
    run.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the whole check on the CPU "
                     "provider (slow; to test the check itself where no GPU is)")
    run.add_argument("--no-native", action="store_true", help="skip building the C++ pre/post kernels")
    run.set_defaults(argv=None)
    for sp, fn in ((prep, cmd_prepare), (parts, cmd_parts), (run, cmd_run)):
        sp.set_defaults(func=fn)
    return p


FAMILIES = ("unet", "deeplabv3plus", "maskrcnn", "sam")


def _families(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"families must be a comma-separated list of {', '.join(FAMILIES)}; got {text!r}")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "command", None) == "run":
            args.argv = argv
        return int(args.func(args) or 0)
    except CheckError as exc:
        print(f"gpu-check: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
