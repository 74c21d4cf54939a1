"""Every recorded benchmark run as one line of ``benchmarks/results/history.jsonl``, and the files made from it.

A line is ``{"id", "date", "machine", "commit", "kind", "what", "headline", "result", "markdown"}``: the run's
name (``<date>-<kind>-<machine>[-runN]``), its day, its machine class (:func:`machine.machine_class`), the
commit its machine record names, what kind of run it is (bench, sam, stream, prepost, serving, precision, ...),
what changed, the figures a reader wants (:mod:`.headlines`), the full result as recorded (a JSON object, or the
Markdown text for runs recorded only as Markdown) and its Markdown table (or null).

    python -m segrt.benchmarks.history add RESULT.json --what "..." [--markdown RESULT.md]   # append a run
    python -m segrt.benchmarks.history index       # regenerate benchmarks/results/README.md
    python -m segrt.benchmarks.history latest      # latest-<machine>.{json,md,png} per machine class
    python -m segrt.benchmarks.history show ID [--out FILE]   # one run's result (e.g. for segrt bench --compare)

Files are replaced whole through a temporary name, so a failed write leaves the old one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segrt.runtime.errors import InvalidInputError, SegrtError

from .headlines import headline, kind_of
from .machine import machine_class

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY = RESULTS / "history.jsonl"
INDEX = RESULTS / "README.md"
FIELDS = ("id", "date", "machine", "commit", "kind", "what", "headline", "result", "markdown")


def read_history(path: Path = HISTORY) -> list[dict[str, Any]]:
    """The runs, oldest first; a line that is not a run is an error naming its number."""
    if not path.is_file():
        return []
    runs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            run = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{n} is not JSON ({exc.msg})") from None
        if not isinstance(run, dict) or set(run) != set(FIELDS):
            raise InvalidInputError(f"{path}:{n} is not a run: expected the fields {', '.join(FIELDS)}")
        runs.append(run)
    return runs


def _write_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write {str(path)!r}: {exc.strerror}") from None


def write_history(runs: Iterable[dict[str, Any]], path: Path = HISTORY) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in runs))


def _machine_record(result: dict[str, Any] | str) -> dict[str, Any]:
    """The result's ``machine`` record; for a ``make gpu-check`` result, one made from its ``environment``."""
    if not isinstance(result, dict):
        return {}
    if isinstance(result.get("machine"), dict):
        return result["machine"]
    env = result.get("environment")
    if isinstance(env, dict) and env.get("gpu"):
        return {"date": env.get("date"), "commit": env.get("commit"), "cores": env.get("cpu_cores"),
                "gpu": {"name": str(env["gpu"]).split(",")[0].strip()}}
    return {}


def make_run(result: dict[str, Any] | str, what: str, *, kind: str | None = None, run_id: str | None = None,
             markdown: str | None = None, date: str | None = None, machine: str | None = None,
             taken: Iterable[str] = ()) -> dict[str, Any]:
    """One history line. Date, machine class and commit come from the result's ``machine`` record where it has
    one (else pass them); the id is ``<date>-<kind>-<machine>``, with ``-runN`` when that is taken."""
    record = _machine_record(result)
    kind = kind or kind_of(result)
    date = date or str(record.get("date") or "")[:10]
    machine = machine or (machine_class(record) if record else None)
    if not date or not machine:
        raise InvalidInputError(f"the {kind} result has no machine record: pass its date and machine")
    if run_id is None:
        taken = set(taken)
        run_id = base = f"{date}-{kind}-{machine}"
        n = 2
        while run_id in taken:
            run_id, n = f"{base}-run{n}", n + 1
    return {"id": run_id, "date": date, "machine": machine, "commit": record.get("commit"), "kind": kind,
            "what": what, "headline": headline(kind, result), "result": result, "markdown": markdown}


def find(runs: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    for run in runs:
        if run["id"] == run_id:
            return run
    raise InvalidInputError(f"no run {run_id!r} in the history; `history index` lists them "
                            f"(latest: {', '.join(r['id'] for r in runs[-3:])})")


# -- the index ------------------------------------------------------------------------------------------
INTRO = """# Benchmark results: the index

Generated from [history.jsonl](history.jsonl) by `python -m segrt.benchmarks.history index`; do not edit by
hand. Every recorded run is one line of `history.jsonl`: `id`, `date`, `machine` (class), `commit`, `kind`,
`what` (what changed), `headline` (the figures below), `result` (the full JSON as recorded; for runs recorded
only as Markdown, that text) and `markdown` (its table). `python -m segrt.benchmarks.history add RESULT.json
--what "..."` appends a run (`make bench` does, then `history latest`); `history show ID --out run.json` gives
any run back, e.g. for `segrt bench --compare BEFORE.json AFTER.json`. The latest `make bench` run per machine
class is `latest-<machine>.{json,md,png}` here. Ratios: the other side's time over segrt's (> 1: segrt is faster);
`1.52x [1.41-1.60]` is a median pair ratio with its quartiles (interleaved pairs), a bare `1.52x` a ratio of p50s.
Until 2026-12-02 each run was a `<date>-<what>-<machine>.{json,md,png}` file here; they were folded into the
history (checked lossless: every JSON equals its line's `result`, every Markdown its `markdown`), and of the
per-run charts only the newest per machine was kept, redrawn from its JSON as `latest-<machine>.png`.
Discussion of the runs until then (goals, outliers, SAM's earlier runs): [notes.md](notes.md). Machines:
`cpu-xeon-2core`, the Intel Xeon this project was built on until 2026-11-25; `cpu-epyc-2core`, an AMD EPYC
(AVX-512 + VNNI) from 2026-12-01; a GPU run files under `gpu-<model>` (`gpu-h200`).
"""


def _cell(text: object) -> str:
    return str(text if text is not None else "-").replace("|", "\\|").replace("\n", " ")


def _headline_text(run: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in run["headline"].items()) or "-"


def render_index(runs: list[dict[str, Any]]) -> str:
    lines = [INTRO, "## Latest `make bench` per machine", "",
             "| machine | run | date | commit | headline | files |", "|---|---|---|---|---|---|"]
    for machine, run in latest_runs(runs).items():
        files = ", ".join(f"[{ext}](latest-{machine}.{ext})" for ext in ("json", "md", "png"))
        lines.append(f"| {machine} | `{run['id']}` | {run['date']} | {_cell(run['commit'])} | "
                     f"{_cell(_headline_text(run))} | {files} |")
    lines += ["", f"## Every run ({len(runs)}, oldest first)", "",
              "| date | machine | commit | kind | run | what changed | headline |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['date']} | {run['machine']} | {_cell(run['commit'])} | {run['kind']} | `{run['id']}` | "
                     f"{_cell(run['what'])} | {_cell(_headline_text(run))} |")
    return "\n".join(lines) + "\n"


def rederive_headlines(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Headlines are derived (:mod:`.headlines`): recompute those of runs with a JSON result after that module
    changes; Markdown-only runs keep the headline written from their text."""
    return [run | {"headline": headline(run["kind"], run["result"])} if isinstance(run["result"], dict) else run
            for run in runs]


def write_index(runs: list[dict[str, Any]], path: Path = INDEX) -> None:
    _write_atomic(path, render_index(runs))


# -- latest per machine -----------------------------------------------------------------------------------
def latest_runs(runs: list[dict[str, Any]], kind: str = "bench") -> dict[str, dict[str, Any]]:
    """The newest run of ``kind`` per machine class (history order: a later line is newer)."""
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run["kind"] == kind and isinstance(run["result"], dict):
            latest[run["machine"]] = run
    return dict(sorted(latest.items()))


def _markdown_of(run: dict[str, Any]) -> str:
    if run["markdown"]:
        return run["markdown"]
    from .report import markdown

    return markdown(run["result"])


def write_latest(runs: list[dict[str, Any]], out_dir: Path = RESULTS, machine: str | None = None) -> list[Path]:
    """``latest-<machine>.{json,md,png}`` for each machine class's newest bench run (or only ``machine``'s)."""
    from .plot import plot_results

    chosen = latest_runs(runs)
    machine = machine_class() if machine == "this" else machine
    if machine is not None:
        if machine not in chosen:
            raise InvalidInputError(f"no bench run on {machine!r}; machines with one: {', '.join(chosen) or 'none'}")
        chosen = {machine: chosen[machine]}
    written = []
    for name, run in chosen.items():
        stem = out_dir / f"latest-{name}"
        _write_atomic(stem.with_suffix(".json"), json.dumps(run["result"], indent=2) + "\n")
        _write_atomic(stem.with_suffix(".md"), f"`{run['id']}` ({run['date']}, commit {run['commit']}): "
                      f"{run['what']}\n\n![the ratios, with their spread]({stem.name}.png)\n\n{_markdown_of(run)}")
        plot_results(run["result"], stem.with_suffix(".png"))
        written += [stem.with_suffix(s) for s in (".json", ".md", ".png")]
    return written


# -- the command ----------------------------------------------------------------------------------------
def _load_result(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInputError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(result, dict):
        raise InvalidInputError(f"{path} is not a result (a JSON object)")
    return result


def _add(args: argparse.Namespace) -> None:
    runs = read_history(args.history)
    try:
        markdown = args.markdown.read_text(encoding="utf-8") if args.markdown else None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the run's Markdown {str(args.markdown)!r}: {exc}") from None
    run = make_run(_load_result(args.result), args.what, kind=args.kind, markdown=markdown,
                   taken=(r["id"] for r in runs))
    write_history([*runs, run], args.history)
    write_index([*runs, run], args.history.with_name("README.md"))
    print(f"added {run['id']}: {_headline_text(run)}")


def _show(args: argparse.Namespace) -> None:
    run = find(read_history(args.history), args.id)
    body = run["result"] if isinstance(run["result"], str) else json.dumps(run["result"], indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(body)
    else:
        _write_atomic(args.out, body)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segrt.benchmarks.history", description=__doc__.split("\n")[0])
    p.add_argument("--history", type=Path, default=HISTORY, help="the JSON Lines file (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="append a run (and regenerate the index)")
    add.add_argument("result", type=Path, help="the run's JSON (segrt bench --json ...)")
    add.add_argument("--what", required=True, help="what changed since the last run, in a sentence")
    add.add_argument("--markdown", type=Path, help="the run's Markdown table (segrt bench --markdown ...)")
    add.add_argument("--kind", help="bench, sam, stream, prepost, ... (default: from the result's keys)")
    sub.add_parser("index", help="re-derive every headline from its result, regenerate README.md beside the history")
    latest = sub.add_parser("latest", help="write latest-<machine>.{json,md,png} beside the history")
    latest.add_argument("--machine", help="only this machine class ('this': this machine's; default: every one)")
    show = sub.add_parser("show", help="print one run's result")
    show.add_argument("id")
    show.add_argument("--out", type=Path, help="write it here instead")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "add":
            _add(args)
        elif args.command == "index":
            runs = rederive_headlines(read_history(args.history))
            write_history(runs, args.history)
            write_index(runs, args.history.with_name("README.md"))
        elif args.command == "latest":
            for path in write_latest(read_history(args.history), args.history.parent, args.machine):
                print(path)
        else:
            _show(args)
    except SegrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
