"""The ``eva`` command.

    eva run NOTEBOOK... [--smoke | --full] [-p NAME VALUE]...
        Execute notebooks with papermill. ``--full`` (the real course run) executes into build/running/ and
        replaces the notebook only when every cell succeeded, so its outputs become the committed ones, and
        adds ledger entries; a failed or interrupted run leaves the notebook byte-identical and keeps the
        executed copy in build/failed/. ``--smoke`` (the default) writes to build/smoke/.
    eva colab NOTEBOOK...
        Point the notebooks' Colab badges and install cells at the repository and release tag of pyproject.toml.
    eva evaluate MODEL.pt2 [--dataset mnist|cifar10]
        Test accuracy of a model saved with ``eva_utils.export.save_for_evaluation`` on the full, real test set.
    eva results [--markdown] [--update-readme] [--check]
        Show the results ledger; ``--markdown`` prints the README table generated from the
        latest full run of each notebook; ``--update-readme`` writes it into README.md;
        ``--check`` fails if README.md's table is stale.
    eva sweep NOTEBOOK... [--seeds 1-10] [-p NAME V1,V2,...] [--smoke | --full] [--cpus-per-run N]
              [--gpus-per-run F] [--address ADDR]
        Every combination notebook x values x seed as one papermill run, a Ray task (see ``sweep.py``); then
        n, mean ± std, min, max per group. ``eva results --sweep ID [--smoke] [--markdown]`` shows it again.
"""
from __future__ import annotations

import argparse
import json
import ast
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from . import config, results


def _value(text: str):
    """Parameter values are Python literals when they parse as one (``0.01``, ``True``), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit): handled like Ctrl-C, so the executed copy is kept."""


def _terminate(signum, frame):
    raise Terminated(f"signal {signum}")


def run_notebooks(paths, mode: str, parameters: dict, output_dir: Path | None = None) -> int:
    """0 when every notebook succeeded, 1 when one failed, 130 after Ctrl-C, 143 after SIGTERM."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live on the main thread
        return _run_notebooks(paths, mode, parameters, output_dir)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run_notebooks(paths, mode, parameters, output_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_notebooks(paths, mode: str, parameters: dict, output_dir: Path | None = None) -> int:
    import papermill as pm

    if "MODE" in parameters:
        raise SystemExit("eva run: choose the mode with --smoke or --full, not -p MODE")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"eva run: no such notebook: {', '.join(map(str, missing))}")
    os.environ["EVA_MODE"] = mode
    config.absolute_data_dir()  # kernels run inside the notebook's folder
    os.environ["EVA_PROGRESS"] = "0"  # progress bars are noise in a saved notebook
    root = results.project_root() or Path.cwd()
    failures = 0
    for nb in map(Path, paths):
        running = root / "build" / "running" / nb.name
        if mode == "full":  # executed into build/running/, moved over the notebook only if every cell succeeded
            out = running
        else:
            out = (output_dir or root / "build" / "smoke") / nb.name
        out.parent.mkdir(parents=True, exist_ok=True)
        running.parent.mkdir(parents=True, exist_ok=True)
        staged = running.with_suffix(".ledger.jsonl")  # its ledger lines, kept back until it succeeds
        staged.unlink(missing_ok=True)
        os.environ["EVA_LEDGER"] = str(staged)
        print(f"[{mode}] {nb} -> {nb if mode == 'full' else out}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=parameters or None, cwd=str(nb.parent.resolve()),
                                kernel_name="python3", progress_bar=False)
        except (Exception, KeyboardInterrupt) as err:
            failures += 1
            kept = [_keep_failed(f, root) for f in ((out, staged) if mode == "full" else (staged,))]
            if isinstance(err, pm.PapermillExecutionError):
                why = f"in cell {err.exec_count}: {err.ename}: {err.evalue}"
            else:
                why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            print(f"FAILED {nb} {why}\n  the executed copy is at {kept[0] if mode == 'full' else out}"
                  + (f"\n  {nb} is unchanged" if mode == "full" else "")
                  + (f"\n  its ledger lines were not recorded (kept in {kept[-1]})" if kept[-1] else ""),
                  file=sys.stderr, flush=True)
            if isinstance(err, KeyboardInterrupt):
                return 143 if isinstance(err, Terminated) else 130
            continue
        finally:
            os.environ.pop("EVA_LEDGER", None)
        _relative_paths(out, nb)
        if mode == "full":
            shutil.move(str(out), str(nb))
        if staged.exists():
            results.append_ledger(results.ledger_path(mode), results.read_ledger(staged))
            staged.unlink()
        print(f"done {nb} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if failures else 0


def _relative_paths(executed: Path, nb: Path) -> None:
    """papermill records where it read and wrote the notebook: name the notebook, not this machine's folders."""
    book = json.loads(executed.read_text())
    book.get("metadata", {}).get("papermill", {}).update(input_path=str(nb), output_path=str(nb))
    executed.write_text(json.dumps(book, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def _keep_failed(path: Path, root: Path) -> Path | None:
    """Move a failed run's executed copy or staged ledger lines to build/failed/ (nothing committed is touched)."""
    if not path.exists():
        return None
    failed = root / "build" / "failed" / path.name
    failed.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, failed)
    return failed


def release() -> tuple[str, str]:
    """(repository URL, release tag) from pyproject.toml, the one place that names them."""
    text = ((results.project_root() or Path.cwd()) / "pyproject.toml").read_text()
    url = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M).group(1).rstrip("/")
    return url, "v" + re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def colab_links(paths) -> int:
    """Point each notebook's Colab badge and install cell at pyproject.toml's repository, at the release tag.

    Run after bumping ``version`` (see the README's "Cutting a release"): a student who opens a notebook
    from its badge then installs the package that produced its committed outputs, not whatever main holds.
    """
    url, tag = release()
    slug = url.split("github.com/", 1)[-1]
    for nb in map(Path, paths):
        text = nb.read_text()
        new = re.sub(r"colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/[^/\s]+/notebooks/[^)\s\\\"]+",
                     f"colab.research.google.com/github/{slug}/blob/{tag}/notebooks/{nb.name}", text)
        new = re.sub(r'git\+https://github\.com/[^"\\\s]+', f"git+{url}@{tag}", new)
        if new != text:
            nb.write_text(new)
            print(f"{nb}: Colab links -> {slug}@{tag}")
    return 0


def evaluate_saved(path: Path, dataset: str) -> int:
    import torch

    from . import augment, data, train

    from .export import load_for_evaluation

    if not path.is_file():
        raise SystemExit(f"eva evaluate: no such file: {path}")
    try:
        model = load_for_evaluation(path)
    except Exception as err:  # torch raises several types for a file that is not an exported program
        raise SystemExit(f"eva evaluate: {path} is not a saved model ({type(err).__name__}); "
                         "save one with eva_utils.export.save_for_evaluation(model, path, input_size)") from None
    if dataset == "mnist":
        test_set = data.mnist(train=False, transform=augment.mnist_test(), smoke=False)
    else:
        test_set = data.cifar10(train=False, transform=augment.cifar_test(), smoke=False)
    loader = torch.utils.data.DataLoader(test_set, batch_size=500)
    loss, acc = train.evaluate(model, loader, "cpu")
    print(f"{config.shown_path(path)}: {dataset} test set, {len(test_set):,} images: accuracy {acc:.2f} %, loss {loss:.4f}")
    return 0


def show_results(markdown: bool, update: bool, check: bool) -> int:
    entries = results.read_ledger()
    table = results.markdown_table(entries)
    readme = (results.project_root() or Path.cwd()) / "README.md"
    if check:
        text = readme.read_text()
        current = text.split(results.TABLE_START, 1)[-1].split(results.TABLE_END, 1)[0].strip()
        if current != table.strip():
            print("README.md's results table is stale: run `eva results --update-readme`", file=sys.stderr)
            return 1
        print("README.md's results table matches the ledger")
        return 0
    if update:
        changed = results.update_readme(readme, table)
        print(f"{readme}: {'updated' if changed else 'already up to date'}")
        return 0
    if markdown:
        print(table)
        return 0
    for e in results.latest_full(entries):
        m = e["metrics"]
        print(f"{e['notebook']:<28} {e.get('label') or '':<12} {e['params']:>9,}  best {m['best_test_acc']:.2f} % "
              f"(ep {m['best_epoch']}/{e['epochs']})  {'met' if e['passed'] else 'missed'}  {e['device']}")
    if not entries:
        print(f"no full run recorded in {results.ledger_path('full')}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="eva", description="EVA course tools")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks with papermill")
    run.add_argument("notebooks", nargs="+")
    how = run.add_mutually_exclusive_group()
    how.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="tiny subset, 1 epoch (default)")
    how.add_argument("--full", dest="mode", action="store_const", const="full",
                     help="the real run; writes the executed notebook in place")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a value of the notebook's parameters cell")
    run.add_argument("--output-dir", type=Path, help="where smoke runs write executed notebooks (default build/smoke)")
    ev = sub.add_parser("evaluate", help="test accuracy of a saved model on the real test set")
    ev.add_argument("model", type=Path)
    ev.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    res = sub.add_parser("results", help="show the results ledger")
    res.add_argument("--markdown", action="store_true", help="print the README results table")
    res.add_argument("--update-readme", action="store_true", help="write the table into README.md")
    res.add_argument("--check", action="store_true", help="fail if README.md's table is stale")
    res.add_argument("--sweep", metavar="ID", help="the summary of sweep ID (with --smoke: of a smoke sweep)")
    res.add_argument("--smoke", action="store_true", help="with --sweep: read the smoke ledger")
    from . import sweep  # Ray itself is imported only when a sweep runs

    sweep.add_arguments(sub.add_parser("sweep", help="notebooks x parameters x seeds as Ray tasks (needs .[sweep])"))
    col = sub.add_parser("colab", help="point notebooks' Colab badge and install cell at the release tag")
    col.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "run":
        params = {name: _value(value) for name, value in args.parameter}
        return run_notebooks(args.notebooks, args.mode or "smoke", params, args.output_dir)
    if args.command == "colab":
        return colab_links(args.notebooks)
    if args.command == "evaluate":
        return evaluate_saved(args.model, args.dataset)
    if args.command == "sweep":
        return sweep.main(args)
    if args.sweep:
        return sweep.show(args.sweep, args.markdown, args.smoke)
    return show_results(args.markdown, args.update_readme, args.check)


if __name__ == "__main__":
    sys.exit(main())
