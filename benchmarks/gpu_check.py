"""The GPU path proven and measured in one call: device tests, throughput, the paper-scale recipe, CNN paths, a study.

    python benchmarks/gpu_check.py                         # on CUDA: every part, about 5 minutes at most
    python benchmarks/gpu_check.py --device cpu --tiny     # the same parts at tiny sizes (make gpu-check DEVICE=cpu)
    python benchmarks/gpu_check.py --parts recipe,archs    # some parts only

Parts, each in its own process under its own time limit (a part that fails or runs out of time is recorded as
such, with what it measured before, and the others go on; the limits together fit the 5 minutes):
    tests       the engine's device-parametrized tests (tests/conftest.py DEVICES) on this device, TF32 off
    throughput  train_throughput.py: loop, previous and engine at a small model count, and the engine at a large
                group (models/hour, fraction of the bf16 peak measured in the same run)
    recipe      the released demo's recipe (profile mnist-paper: MLP 784-512-256-10) at paper scale: 2,000 MLPs on
                all 60,000 Fashion-MNIST training images, trained, evaluated and estimated
    archs       the profiles' CNN (mem_cnn, width 32), the CIFAR-shaped ResNet-18 and cifar10-fast's (width 32) on
                random images: one model at a time against a vmap group, models/hour each (what choose_path on
                CUDA should follow), and cifar10-fast's fraction of an H100's dense bf16 peak (its target: 20%)
    noisy       the fashion-mnist-noisy study through stage 2 (train, estimate, split halves) via memlib's API

It needs only torch, timm, numpy, scipy, pandas, pyyaml, tqdm and pytest (no papermill, nbconvert, cleanlab or
submitit: each part checks that none was imported). Fashion-MNIST is read from --data-dir, $MEMLIB_DATA_DIR or
Debian's folder; where it is absent (or with --synthetic-data) every part runs on random images of its shapes
(timings only), and the log, the JSON (data.kind) and the headline say which. The exit status is 0 only when
every part ended ok: a part that failed, was skipped or ran past its limit fails the call. Writes
gpu_check.json and gpu_check.log under --out (default $OUT if set, else results/gpu-check); stores and scratch
files go to a temporary folder that is removed at the end. The last line printed is the headline.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTS = ("tests", "throughput", "recipe", "archs", "noisy")
# seconds per part, its process's start and imports included: on CUDA 285 in all, within one 5-minute call (two
# such calls and the machine's start fit the 15 minutes of device time). Each is about 1.5 to 2 times its
# estimate from the part's measured CPU counterpart and its arithmetic (benchmarks/README.md, "gpu_check.py").
LIMITS = {"tests": 35, "throughput": 50, "recipe": 110, "archs": 60, "noisy": 30}
# --tiny on a CPU: the limits only stop a part that hangs (a CPU shared with other work can be 10 times slower)
TINY_LIMITS = {"tests": 300, "throughput": 600, "recipe": 300, "archs": 600, "noisy": 300}
BUDGET = 285  # seconds for all parts together on the device (--budget): a part never gets more than what is left
TEST_FILES = ("tests/test_engine.py", "tests/test_stacked_layouts.py", "tests/test_host_work.py")
ABSENT_THERE = ("papermill", "nbconvert", "nbformat", "cleanlab", "submitit", "ipykernel", "jupyterlab")
RESULT_FILE, LOG_FILE = "gpu_check.json", "gpu_check.log"

# sizes of each part: on the device (full) and for a tiny CPU run (--tiny)
SIZES = {
    "full": dict(
        tp_models=8, tp_epochs=10, big_models=1000, big_group=500, big_epochs=10, peak_windows=5,
        recipe_models=2000, recipe_group=250, recipe_train=None, recipe_epochs=10, recipe_min_out=500,
        cnn_models=16, cnn_steps=50, resnet_models=8, resnet_steps=20, resnet_train=50_000, resnet_batch=None,
        fast_models=8, fast_steps=40,
        noisy_models=None, noisy_group=200, noisy_train=None, noisy_epochs=None, noisy_min_out=None,
        synthetic_train=60_000, synthetic_test=10_000,
    ),
    "tiny": dict(
        tp_models=2, tp_epochs=1, big_models=4, big_group=4, big_epochs=1, peak_windows=1,
        recipe_models=16, recipe_group=8, recipe_train=2000, recipe_epochs=1, recipe_min_out=2,
        cnn_models=2, cnn_steps=2, resnet_models=2, resnet_steps=1, resnet_train=500, resnet_batch=32,
        fast_models=2, fast_steps=1,
        noisy_models=16, noisy_group=8, noisy_train=2000, noisy_epochs=1, noisy_min_out=2,
        synthetic_train=10_000, synthetic_test=1000,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The parent: runs each part in its own process group under its limit, gathers the JSON, prints the headline
# ---------------------------------------------------------------------------------------------------


def default_out() -> Path:
    """$OUT where it is set (the device machine's folder that comes back), else results/gpu-check."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "results" / "gpu-check"


def find_fashion(data_dir: str | None) -> tuple[Path | None, str]:
    """The folder of Fashion-MNIST's four IDX files, or None and why not."""
    import memlib
    from memlib.data.builtin import find_idx_dir

    try:
        cfg = memlib.load_profile("fashion-mnist")
        cfg = cfg.replace(data_dir=str(Path(data_dir).resolve())) if data_dir else cfg
        return find_idx_dir("fashion-mnist", cfg), ""
    except (memlib.DataError, memlib.ConfigError) as exc:
        print(exc, file=sys.stderr)  # where it looked, and how to get it
        return None, "Fashion-MNIST not found (--data-dir, else $MEMLIB_DATA_DIR and Debian's folder)"


def write_synthetic_fashion(folder: Path, n_train: int, n_test: int) -> Path:
    """Random 28x28 uint8 images and labels as Fashion-MNIST's four IDX files (timings only: nothing to learn)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
        (folder / name).write_bytes(header + a.tobytes())
    return folder


def environment(device: str) -> dict:
    """Versions, the device's name and the commit, for the record."""
    import numpy as np
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    env["cuda"], env["cuda_available"] = torch.version.cuda, torch.cuda.is_available()
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        env["timm"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
    else:
        from train_throughput import cpu_name

        env["device_name"] = cpu_name()
    env["cpu_count"] = os.cpu_count()
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        env["commit"] = out.stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


def run_part(name: str, argv: list[str], limit: float, work: Path, log) -> dict:
    """Run one part in its own process group; kill the group at `limit` s. Its result, whatever happened."""
    result = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--part", name, "--result", str(result)]
    log.write(f"\n== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=max(limit, 1))
        status = None if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and every process it started
        proc.wait()
        rc, status = None, "timeout"
    seconds = time.perf_counter() - start
    out = json.loads(result.read_text()) if result.exists() else {}
    if status == "timeout":
        out["status"] = "timeout"
        out["reason"] = f"ran past its limit of {limit:.0f} s; the figures here are those it had saved by then"
    elif status == "failed" and out.get("status") != "failed":
        out.update(status="failed", reason=out.get("reason") or f"exit status {rc}: see {LOG_FILE}")
    out.setdefault("status", "ok")
    out.update(seconds=round(seconds, 1), limit_s=round(limit))
    return out


def headline(device: str, env: dict, parts: dict, total: float, data_kind: str) -> str:
    """One line of key=value pairs: what each part measured, '-' where it measured nothing."""

    def get(part: str, *keys, fmt: str = "{:.0f}") -> str:
        value = parts.get(part, {})
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return "-" if value is None else fmt.format(value) if isinstance(value, (int, float)) else str(value)

    ok = sum(p["status"] == "ok" for p in parts.values())
    t = parts.get("tests", {})
    tests = f"{t.get('passed', 0)}/{t.get('tests', 0)}" if "tests" in t else "-"
    pairs = {
        "device": f"{device}:{str(env.get('device_name', '')).replace(' ', '_')}",
        "parts_ok": f"{ok}/{len(parts)}",
        "data": data_kind,
        "tests_passed": tests,
        "engine_models_per_hour": get("throughput", "paths", "headline", "engine_models_per_hour"),
        "frac_of_peak": get("throughput", "paths", "headline", "frac_of_peak", fmt="{:.2f}"),
        "large_group_models_per_hour": get("throughput", "large_group", "headline", "engine_models_per_hour"),
        "recipe_models": get("recipe", "models_done"),
        "recipe_seconds": get("recipe", "seconds_all", fmt="{:.1f}"),
        "cnn_single_mph": get("archs", "mem_cnn", "single_models_per_hour"),
        "cnn_vmap_mph": get("archs", "mem_cnn", "vmap_models_per_hour"),
        "resnet18_single_mph": get("archs", "resnet18", "single_models_per_hour"),
        "resnet18_vmap_mph": get("archs", "resnet18", "vmap_models_per_hour"),
        "cifar_fast_single_mph": get("archs", "cifar10_fast", "single_models_per_hour"),
        "cifar_fast_vmap_mph": get("archs", "cifar10_fast", "vmap_models_per_hour"),
        "cifar_fast_frac_of_h100": get("archs", "cifar10_fast", "frac_of_h100_peak", fmt="{:.3f}"),
        "noisy_models": get("noisy", "models_done"),
        "noisy_seconds": get("noisy", "seconds_all", fmt="{:.1f}"),
        "total_s": f"{total:.0f}",
    }
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts, write the JSON and the log, print the headline; 0 only when every part is ok."""
    args = parse_args(argv)
    if args.part:
        return run_child(args)
    out = Path(args.out) if args.out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",")] if args.parts else list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}: choose among {', '.join(PARTS)}")
    limits = dict(TINY_LIMITS if args.tiny else LIMITS)
    for item in args.limit:
        name, _, value = item.partition("=")
        limits[name] = float(value)
    budget = args.budget or (sum(limits.values()) if args.tiny else BUDGET)
    started, t0 = _dt.datetime.now().astimezone(), time.perf_counter()
    env = environment(args.device)
    record = {
        "check": "gpu_check",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": args.device,
        "tiny": args.tiny,
        "environment": env,
        "sizes": SIZES["tiny" if args.tiny else "full"],
        "limits": {p: limits[p] for p in parts},
        "parts": {},
    }
    if args.device.startswith("cuda") and env["cuda_available"] is False:
        record.update(error="no CUDA device: torch.cuda.is_available() is False here", seconds=0.0)
        record["headline"] = f"device={args.device} parts_ok=0/{len(parts)} error=no_cuda_device"
        _write_json(out / RESULT_FILE, record)
        print(f"gpu_check: {record['error']} (make gpu-check DEVICE=cpu runs it on the CPU)\n{record['headline']}")
        return 2
    print(f"gpu_check on {args.device} ({env['device_name']}), parts {', '.join(parts)}; log: {out / LOG_FILE}")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        with open(out / LOG_FILE, "w") as log:
            log.write(f"gpu_check {record['date']} {record['command']}\n{json.dumps(env)}\n")
            data_dir, data_kind, why = _data(args, work)
            record["data"] = {"fashion_mnist": str(data_dir), "kind": data_kind, "note": why}
            log.write(f"data: {data_kind} Fashion-MNIST, {why}\n")
            print(f"data: {data_kind} Fashion-MNIST ({why})", flush=True)
            child = ["--device", args.device, "--work", str(work), "--data-kind", data_kind]
            child += ["--data-dir", str(data_dir)]
            child += ["--tiny"] if args.tiny else []
            child += ["--tests-k", args.tests_k] if args.tests_k else []
            child += ["--tests-path", args.tests_path] if args.tests_path else []
            for name in parts:
                left = budget - (time.perf_counter() - t0)
                res = run_part(name, child, min(limits[name], max(left, 1)), work, log)
                record["parts"][name] = res
                print(f"  {name:<10} {res['status']:<8} {res['seconds']:6.1f} s  {res.get('reason', '')}", flush=True)
                _write_json(out / RESULT_FILE, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    record["seconds"] = round(total, 1)
    record["headline"] = headline(args.device, env, record["parts"], total, record["data"]["kind"])
    _write_json(out / RESULT_FILE, record)
    with open(out / LOG_FILE, "a") as log:
        log.write(f"\n{record['headline']}\n")
    print(f"wrote {out / RESULT_FILE} and {out / LOG_FILE}")
    print(record["headline"])
    return 0 if all(p["status"] == "ok" for p in record["parts"].values()) else 1


def _data(args, work: Path) -> tuple[Path, str, str]:
    """Fashion-MNIST's folder, 'real' or 'synthetic', and a note: real where found, else random images of its shapes."""
    found, why = (None, "--synthetic-data given") if args.synthetic_data else find_fashion(args.data_dir)
    if found is not None:
        return found, "real", f"read from {found}"
    sizes = SIZES["tiny" if args.tiny else "full"]
    folder = write_synthetic_fashion(work / "fashion", sizes["synthetic_train"], sizes["synthetic_test"])
    return folder, "synthetic", f"{why}: random images of its shapes, timings only (nothing to learn)"


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# A part, in its own process: `save` keeps what it has measured so far, so a part killed at its limit
# still reports it
# ---------------------------------------------------------------------------------------------------


class Saver:
    """The part's result so far, rewritten to its file on every `save`."""

    def __init__(self, path: Path):
        self.path, self.value = path, {}

    def __call__(self, **values) -> dict:
        self.value.update(values)
        _write_json(self.path, self.value)
        return self.value


def run_child(args) -> int:
    """Run one part; its result goes to --result (with status, and the modules of ABSENT_THERE it imported)."""
    save = Saver(Path(args.result))
    part = {"tests": part_tests, "throughput": part_throughput, "recipe": part_recipe}
    part.update(archs=part_archs, noisy=part_noisy)
    try:
        part[args.part](args, save)
        rc = 0
    except Exception as exc:
        traceback.print_exc()
        save(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
        rc = 1
    save(imported_absent_modules=sorted(m for m in ABSENT_THERE if m in sys.modules))
    save.value.setdefault("status", "ok")
    save()
    sys.stdout.flush()
    return rc


def _sizes(args) -> dict:
    return SIZES["tiny" if args.tiny else "full"]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _streamed(cmd: list[str], env: dict, each_line=None) -> tuple[int, str]:
    """Run `cmd`, its output copied line by line to ours (the log, even if the part is killed), and kept;
    `each_line` is called on every line as it comes."""
    lines = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
            if each_line is not None:
                each_line(line)
    return proc.returncode, "".join(lines)


TEST_LINE = re.compile(r"^(?P<test>\S+::\S+) (?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (?P<test>\S+::\S+)(?: - (?P<message>.*))?$")


def part_tests(args, save) -> None:
    """The device-parametrized engine tests on this device (pytest -m device), each result saved as pytest prints
    it (-v), so that a part killed at its limit still reports every test that finished before."""
    device = args.device.split(":")[0]
    env = {**os.environ, "MEMLIB_TEST_DEVICES": device, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    files = args.tests_path.split(",") if args.tests_path else list(TEST_FILES)
    cmd = [sys.executable, "-m", "pytest", "-m", "device", *files, "-v", "-rA", "-p", "no:cacheprovider"]
    cmd += ["-k", args.tests_k] if args.tests_k else []
    save(command=" ".join(cmd[1:]), tf32="off, cuDNN deterministic (tests/conftest.py)", devices=device)
    results: dict[str, str] = {}
    messages: dict[str, str] = {}

    def record(line: str) -> None:
        m = TEST_LINE.match(line)
        if m and m.group("test") not in results:
            results[m.group("test")] = m.group("outcome").lower()
        elif (m := FAILED_LINE.match(line.rstrip())) and m.group("message"):
            messages[m.group("test")] = m.group("message")[:400]
        else:
            return
        outcomes = list(results.values())
        failed = [{"test": t, "message": messages.get(t, "")} for t, v in results.items() if v in ("failed", "error")]
        counts = {k: outcomes.count(v) for k, v in (("passed", "passed"), ("skipped", "skipped"))}
        counts.update(failures=outcomes.count("failed"), errors=outcomes.count("error"))
        save(tests=len(results), **counts, failed=failed, results=results)

    returncode, _ = _streamed(cmd, env, record)
    save(exit_status=returncode)
    value = save.value
    if value.get("failures") or value.get("errors") or returncode not in (0, 5):
        save(status="failed", reason=f"{len(value.get('failed', []))} test(s) failed (pytest exit status {returncode})")
    elif not value.get("passed"):
        save(status="skipped", reason="no test ran: " + ("pytest collected none" if returncode == 5 else "all skipped"))


THROUGHPUT_ROW = re.compile(
    r"^\((?P<path>\S+)\s*\)\s+(?P<s>[\d.]+) s\s+(?P<mph>\d+) models/hour\s+(?P<frac>[\d.]+)% of the (?P<peak>\w+) peak"
    r"\s+test accuracy (?P<acc>\S+)"
)


def parse_throughput(text: str) -> dict:
    """train_throughput.py's output as numbers: the setup line, the matmul peak, each path's row, the headline."""
    out: dict = {"paths": {}}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if " models per path, " in line and "engine:" in line:
            out["setup"] = line
        m = re.match(r"matmul peak in this layout: fp32 (\d+) GFLOP/s, bf16 (\d+) GFLOP/s", line)
        if m:
            out["peak_gflops"] = {"fp32": int(m.group(1)), "bf16": int(m.group(2))}
        m = THROUGHPUT_ROW.match(line)
        if m:
            acc = float(m.group("acc"))
            out["paths"][m.group("path")] = {
                "seconds": float(m.group("s")),
                "models_per_hour": int(m.group("mph")),
                "frac_of_peak": float(m.group("frac")) / 100,
                "peak": m.group("peak"),
                "test_accuracy": None if acc != acc else acc,
            }
    if lines and "=" in lines[-1]:
        head = dict(kv.split("=", 1) for kv in lines[-1].split() if "=" in kv)
        out["headline"] = {k: _number(v) for k, v in head.items()}
    return out


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return None if value != value else value


def _throughput(args, extra: list[str], save, key: str, peak_windows: int | None = None) -> dict:
    """One run of train_throughput.py on this device; its parsed output saved under `key`."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--device", args.device]
    cmd += ["--peak-windows", str(peak_windows or _sizes(args)["peak_windows"]), *extra]
    if args.device.startswith("cuda") or args.tiny:  # one process: the paths in turn, no process (CUDA) start each
        cmd.append("--inline")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.data_dir:
        env["MEMLIB_DATA_DIR"] = args.data_dir
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    returncode, text = _streamed(cmd, env)
    res = {"command": " ".join(["python", *cmd[1:]]), "wall_s": round(time.perf_counter() - start, 1)}
    res.update(parse_throughput(text), exit_status=returncode)
    res["data"] = "digits (Fashion-MNIST not found)" if "using digits" in text else args.data_kind
    save(**{key: res})
    if returncode != 0:
        raise RuntimeError(f"train_throughput.py exited with status {returncode} ({key}): see the log")
    return res


def part_throughput(args, save) -> None:
    """The three paths at a small model count, then the engine alone at a large group."""
    s = _sizes(args)
    small = ["--models", str(s["tp_models"]), "--epochs", str(s["tp_epochs"]), "--group-size", str(s["tp_models"])]
    _throughput(args, small, save, "paths")
    big = ["--paths", "engine", "--models", str(s["big_models"]), "--group-size", str(s["big_group"])]
    _throughput(args, [*big, "--epochs", str(s["big_epochs"])], save, "large_group")


def part_archs(args, save) -> None:
    """mem_cnn (the profiles' CNN: width 32, batch 256) and the CIFAR-shaped ResNet-18: single against vmap.

    Only the ratio of the two paths matters here, so the matmul peak is taken in one short window."""
    s = _sizes(args)
    cnn = ["--arch", "mem_cnn", "--width", "32", "--batch-size", "256", "--paths", "engine,engine:vmap"]
    cnn += ["--models", str(s["cnn_models"]), "--group-size", str(s["cnn_models"]), "--steps", str(s["cnn_steps"])]
    _paths_compared(_throughput(args, cnn, save, "mem_cnn", 1), s["cnn_models"], save, "mem_cnn")
    res = ["--synthetic-cifar", "--synthetic-train", str(s["resnet_train"]), "--paths", "engine,engine:vmap"]
    res += ["--models", str(s["resnet_models"]), "--group-size", str(s["resnet_models"])]
    res += ["--steps", str(s["resnet_steps"])]
    res += ["--batch-size", str(s["resnet_batch"])] if s["resnet_batch"] else []
    _paths_compared(_throughput(args, res, save, "resnet18", 1), s["resnet_models"], save, "resnet18")
    part_cifar_fast(args, save)


def part_cifar_fast(args, save) -> None:
    """cifar10-fast's network and batch (mem_resnet18, width 32, batch 512) on random CIFAR-shaped images: models/hour
    of its recipe's training (10 epochs of 35,000 images), extrapolated from the steps timed, and the fraction of an
    H100's dense bf16 peak that makes (benchmarks/flops.py: the target is TARGET_FRACTION of it)."""
    import flops

    import memlib

    s, cfg = _sizes(args), memlib.load_profile("cifar10-fast")
    k = s["fast_models"]
    fast = ["--synthetic-cifar", "--synthetic-train", str(s["resnet_train"]), "--paths", "engine,engine:vmap"]
    batch = s["resnet_batch"] or cfg.batch_size  # --tiny: a small batch, as for the ResNet-18
    fast += ["--width", str(cfg.width), "--batch-size", str(batch), "--epochs", str(cfg.epochs)]
    fast += ["--models", str(k), "--group-size", str(k), "--steps", str(s["fast_steps"])]
    res = _throughput(args, fast, save, "cifar10_fast", 1)
    _paths_compared(res, k, save, "cifar10_fast")
    training = flops.model_flops(cfg)["training"]  # --steps times training only
    best = max(res.get("single_models_per_hour") or 0, res.get("vmap_models_per_hour") or 0)
    res.update(training_pflop_per_model=round(training / 1e15, 4), target_fraction=flops.TARGET_FRACTION)
    res.update(frac_of_h100_peak=round(best * training / 3600 / flops.H100_BF16_DENSE, 6) if best else None)
    save(cifar10_fast=res)


def _paths_compared(res: dict, k: int, save, key: str) -> None:
    single, vmap = res["paths"].get("engine", {}), res["paths"].get("engine:vmap", {})
    res.update(single_models_per_hour=single.get("models_per_hour"), vmap_models_per_hour=vmap.get("models_per_hour"))
    a, b = single.get("seconds"), vmap.get("seconds")  # the same models and steps on both paths
    res.update(vmap_group=k)
    if a and b:
        res.update(vmap_over_single=round(a / b, 2), faster_path="vmap" if b < a else "single")
    save(**{key: res})


def _study(args, save, cfg, seconds_key: str) -> tuple:
    """Train `cfg`'s store group by group in this process (saving progress after each chunk), then estimate it."""
    import numpy as np

    import memlib
    from memlib.train.engine import NeuralLearner

    t0 = time.perf_counter()
    data = memlib.load_dataset(cfg)
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    learner = NeuralLearner(cfg, data)
    save(path=learner.path, precision=learner.precision, group_size=cfg.group_size, num_models=cfg.num_models)
    save(n_train=data.n_train, n_test=data.n_test, epochs=cfg.epochs, arch=cfg.arch, data=args.data_kind)
    save(seconds_load=round(t_load, 2))
    chunk = max(cfg.group_size, -(-cfg.num_models // 8) // cfg.group_size * cfg.group_size)
    store = None  # opened and verified once, then handed back chunk after chunk (no row is hashed twice)
    for start in range(0, cfg.num_models, chunk):
        rows = range(start, min(start + chunk, cfg.num_models))
        store = memlib.train_subsets(cfg, data, learner=learner, rows=rows, store=store)
        _sync(args.device)
        done, train_s = store.done(), time.perf_counter() - t1
        save(models_done=done, seconds_train=round(train_s, 2), models_per_hour=round(done / train_s * 3600))
    t2 = time.perf_counter()
    est = memlib.estimate(cfg, store, data)
    t3 = time.perf_counter()
    save(seconds_estimate=round(t3 - t2, 2), **{seconds_key: round(t3 - t1, 2)})
    store_bytes = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    save(test_accuracy=round(float(np.asarray(store["test_correct"]).mean()), 4), store_gb=round(store_bytes / 1e9, 2))
    save(mem_mean=round(float(np.nanmean(est.mem.value)), 4), pairs=len(est.pairs))
    return data, store, est


def part_recipe(args, save) -> None:
    """mnist-paper's recipe (MLP 784-512-256-10, SGD 0.1/0.9, batch 128, 10 epochs) on all of Fashion-MNIST."""
    import memlib

    s = _sizes(args)
    cfg = memlib.load_profile("mnist-paper").replace(
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        train_size=s["recipe_train"],
        results_dir=str(Path(args.work) / "results"),
        device=args.device,
        num_models=s["recipe_models"],
        group_size=s["recipe_group"],
        epochs=s["recipe_epochs"],
        min_out=s["recipe_min_out"],
        mask_design="balanced" if args.tiny else "random",
        executor="local",
    )
    save(recipe="mnist-paper on fashion-mnist", seconds_all_is="learner set-up + training + evaluation + estimation")
    _study(args, save, cfg, "seconds_all")


def part_noisy(args, save) -> None:
    """fashion-mnist-noisy through stage 2: preflight, training, estimates (saved), split halves."""
    import memlib

    s = _sizes(args)
    changes = dict(data_dir=args.data_dir, results_dir=str(Path(args.work) / "results"), device=args.device)
    changes.update(executor="local", workers=1)
    names = {"noisy_models": "num_models", "noisy_train": "train_size", "noisy_epochs": "epochs"}
    names.update(noisy_min_out="min_out")
    changes.update({name: s[key] for key, name in names.items() if s[key] is not None})  # else the profile's
    profile = memlib.load_profile("fashion-mnist-noisy")
    cfg = profile.replace(**changes, group_size=min(s["noisy_group"], changes.get("num_models", profile.num_models)))
    t0 = time.perf_counter()
    memlib.check(cfg)  # the notebooks' preflight (it loads the data itself)
    save(seconds_preflight=round(time.perf_counter() - t0, 2), stages="1 (train) and 2 (estimate, split halves)")
    data, store, est = _study(args, save, cfg, "seconds_stages")
    t1 = time.perf_counter()
    est.save(cfg.out_dir / "estimates.npz")
    sh = memlib.split_half(cfg, store, data)
    t2 = time.perf_counter()

    flips = data.flips
    save(
        seconds_split_half=round(t2 - t1, 2),
        split_half_mem_spearman=_float(sh.get("mem_spearman")),
        flips=len(flips) if flips else 0,
    )
    save(seconds_all=round(save.value["seconds_stages"] + (t2 - t1) + save.value["seconds_preflight"], 2))


def _float(value):
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the parent's, and a part's: --part and what the parent passes it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU run: a few minutes on 2 cores)")
    parser.add_argument("--out", default=None, help="output folder (default: $OUT, else results/gpu-check)")
    parser.add_argument("--parts", default=None, help=f"comma list of parts (default all: {','.join(PARTS)})")
    parser.add_argument("--limit", action="append", default=[], help="PART=SECONDS, a part's own time limit")
    parser.add_argument(
        "--budget", type=float, default=None, help=f"seconds for all parts (default {BUDGET}; --tiny: no cap)"
    )
    parser.add_argument("--tests-k", default=None, help="pytest -k expression: only these device tests")
    parser.add_argument("--data-dir", default=None, help="folder of Fashion-MNIST's IDX files")
    parser.add_argument(
        "--synthetic-data", action="store_true", help="random images even where Fashion-MNIST is found (timings only)"
    )
    # passed by the parent to a part
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-kind", default="real", help=argparse.SUPPRESS)
    parser.add_argument("--tests-path", default=None, help=argparse.SUPPRESS)  # the tests part's files (its tests)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
