"""The GPU device check in one call: install onnxruntime-gpu, run the gpu tests, benchmark against
sentence-transformers, and write the report — each step timed, recorded, and skipped (with the reason)
when it no longer fits the deadline.

On the device machine (see benchmarks/gpu/README.md for the calls that carry the wheel there first):

    python3 benchmarks/gpu/kit.py --out $OUT --deadline-s 480 --wheel-store /tmp/rerankrt-wheels

Here, on the CPU (what tests/test_gpu_kit.py runs; the tiny model, CPU execution provider, fp32):

    python3 benchmarks/gpu/kit.py --out /tmp/kit-dry --dry-run

Steps (each a record in the jsonl, with status ran / skipped / failed, seconds and the reason):

  install.store      join every whole in --wheel-store (benchmarks/gpu/wheel_parts.py): the
                     onnxruntime-gpu wheel, and the distilled 17m when it travelled as parts
  install.wheel      pip install --no-deps --target /tmp/ortgpu WHEEL; /tmp/ortgpu goes first on the
                     children's PYTHONPATH, so the preinstalled CPU onnxruntime cannot shadow it
  install.rerankrt   rerankrt importable offline: a PYTHONPATH shim (see make_shim), else pip -e
  install.providers  a child reports onnxruntime's providers, whether a CUDA session really gets the
                     CUDA EP, torch/CUDA, versions
  gpu_tests          python -m pytest -m gpu tests/test_gpu.py (skips cleanly without CUDA)
  workload           negconstraint pairs when --data has them, else a fixed-seed synthetic workload
  build.MODEL        random-weight Ettin fixture (tests/builders.py) + rerankrt export fp32,fp16;
                     in a background thread on half the cores (GPU hidden) while the other half
                     measures; skipped when its predicted time no longer fits
  bench.MODEL        torch fp32 reference and sentence-transformers bf16 (flash_attention_2, else
                     sdpa: the one that loaded is recorded), then rerankrt fp16 on the CUDA EP for
                     backend_options io_binding off / on / on + cuda_graph, each in its own
                     process; pairs/s, × st, × the published figure, fidelity vs the fp32 reference,
                     peak GPU memory, session creation time

Outputs in --out: gpu-STAMP.jsonl (one record per line, written as the run goes), gpu-STAMP.md (rewritten
after every step), gpu-STAMP-kit.log and gpu-STAMP-build.log (the children's output),
gpu-STAMP-pytest.txt, nvidia-smi.txt. The top level needs only the standard library and numpy; torch,
sentence-transformers and onnxruntime are imported inside the child processes that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import site
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KIT = Path(__file__).resolve()
REPO_ROOT = HERE.parent.parent
TESTS = REPO_ROOT / "tests"
SHARED = REPO_ROOT.parent / "shared"
DATA_CANDIDATES = (SHARED / "data" / "negconstraint", HERE / "carry" / "negconstraint")  # the second: carried
SHARED_TOKENIZER = SHARED / "data" / "modernbert-tokenizer.json"
DISTILLED_NAME = "17m-distilled"
DISTILLED_ITEM = "ettin-17m-distilled"  # the folder's name, and the whole's name in the parts store
DISTILLED_CANDIDATES = (HERE / "carry" / DISTILLED_ITEM, SHARED / "models" / DISTILLED_ITEM)
DEFAULT_WORK = Path("/tmp/rerankrt-kit")
DEFAULT_ORT_TARGET = Path("/tmp/ortgpu")
ORT_WHEEL_PREFIX = "onnxruntime_gpu-"
# The CUDA EP by name: onnxruntime-gpu also lists the TensorRT EP, whose libraries (libnvinfer) the device
# lacks; a load without providers would put TensorRT first (tests/test_gpu.py checks that path on its own).
CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]

# The published throughput of sentence-transformers' CrossEncoder for the Ettin rerankers: bf16 with
# FlashAttention2 on one H100 (the figures the task names). Keyed by shape; other shapes have none.
PUBLISHED_PAIRS_PER_S = {"17m": 7517.0, "1b": 928.0}
PUBLISHED_SOURCE = "sentence-transformers CrossEncoder, bf16 + FlashAttention2, one H100 (published Ettin figures)"

MAX_LENGTH = 512
DEFAULT_SIZES = ("17m", "1b", "150m")  # 1b before 150m: it has a published figure; 150m is skipped first
WORKLOAD_SHAPE = {"tiny": (2, 10), "17m": (40, 100), DISTILLED_NAME: (40, 100), "32m": (30, 100),
                  "68m": (20, 100), "150m": (20, 100), "400m": (10, 100), "1b": (10, 100)}
DRY_WORKLOAD_SHAPE = (2, 10)
ST_BATCH_SIZES = (32, 64, 128, 256)
DRY_ST_BATCH_SIZES = (16,)
ATTENTION_TRIES = ("flash_attention_2", "sdpa")
GATE_PAIRS_RANDOM = 10  # the smallest built-in gate set: random weights make the gate meaningless anyway
RANDOM_FP16_TOLERANCE = {"max_rel_delta": 5e-2, "min_spearman": 0.99, "min_top10": 0.8}  # tests/conftest.py's
REPORT_RESERVE_S = 15.0  # kept for writing the report when the deadline nears
# Planning guess (seconds) for a fixture + fp32/fp16 export on half of a 16-core machine, until this run has
# measured a build of comparable size (Kit.predicted): 17m ≈ 30 s, 150m ≈ 70 s, 1b ≈ 330 s. Unmeasured on a
# device so far; each build.* record keeps predicted_s beside the measured seconds.
GUESS_BUILD_OVERHEAD_S, GUESS_BUILD_S_PER_MPARAM = 25.0, 0.3
MIN_BENCH_S = 20.0  # a build is not started unless this much would be left for its measurements
VOCAB = 50368
SHAPES = {"tiny": (64, 4, 4, 96), "17m": (256, 7, 4, 384), "32m": (384, 10, 6, 576), "68m": (512, 19, 8, 768),
          "150m": (768, 22, 12, 1152), "400m": (1024, 28, 16, 2624), "1b": (1792, 28, 28, 3840)}  # tests/builders.py


def say(message: str) -> None:
    print(f"[kit {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def approx_params(shape: str) -> int:
    """Parameters of an Ettin shape: embeddings + per layer 4H² (attention) + 3HI (gated MLP)."""
    hidden, layers, _, inter = SHAPES[shape]
    return VOCAB * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)


def shape_of(model_dir: Path) -> str | None:
    """Which Ettin shape a CrossEncoder directory has (from its config.json), or None."""
    for config in (model_dir / "config.json", *sorted(model_dir.glob("*/config.json"))):
        if config.is_file():
            c = json.loads(config.read_text(encoding="utf-8"))
            key = (c.get("hidden_size"), c.get("num_hidden_layers"), c.get("num_attention_heads"),
                   c.get("intermediate_size"))
            return next((name for name, s in SHAPES.items() if s == key), None)
    return None


# ---------------------------------------------------------------------------------------------
# Agreement: the parity gate's own metrics (engine/agreement.py needs only numpy), loaded from its file
# because the driver imports neither the rerankrt package nor onnxruntime.
# ---------------------------------------------------------------------------------------------
def _agreement():
    spec = importlib.util.spec_from_file_location("rerankrt_agreement", REPO_ROOT / "engine" / "agreement.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


agreement = _agreement()


def fidelity(reference: np.ndarray, candidate: np.ndarray, groups: list[int]) -> dict:
    """max |Δ|, max |Δ| / range, Spearman (average ranks) and mean per-query top-10 overlap."""
    ref, cand = np.asarray(reference, np.float64).ravel(), np.asarray(candidate, np.float64).ravel()
    delta = np.abs(ref - cand)
    span = float(ref.max() - ref.min()) if len(ref) else 0.0
    return {"max_abs_delta": float(delta.max()) if len(delta) else 0.0,
            "max_rel_delta": float(delta.max() / span) if span > 0 and len(delta) else None,
            "reference_range": span, "spearman": agreement.spearman(ref, cand),
            "top10_agreement": agreement.top_k_agreement(ref, cand, groups) if len(ref) else None,
            "finite": bool(np.isfinite(cand).all())}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


# ---------------------------------------------------------------------------------------------
# The machine.
# ---------------------------------------------------------------------------------------------
def nvidia_smi(*args: str, timeout: float = 15) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi {' '.join(args)} failed: {exc}"
    return done.stdout + (done.stderr if done.returncode else "")


def gpu_memory_used_mib() -> float | None:
    out = nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits", timeout=5)
    try:
        return float(out.strip().splitlines()[0]) if out else None
    except (ValueError, IndexError):
        return None


class GpuMemorySampler:
    """Device-wide ``nvidia-smi memory.used`` sampled while a child runs, minus the reading before it started.

    Children run one at a time on the GPU, so the delta is that process's footprint as the driver sees it
    (CUDA context and every allocator's reservation included). Per-process ``--query-compute-apps`` is not
    used: in containers (gVisor) it often lists no processes or host PIDs.
    """

    METHOD = ("nvidia-smi memory.used (device-wide), the peak of readings every 0.5 s while the process ran, minus "
              "the reading just before it")

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.baseline = gpu_memory_used_mib()
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mib()
            if used is not None:
                self.samples += 1
                self.peak = used if self.peak is None else max(self.peak, used)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> GpuMemorySampler:
        if self.baseline is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def result(self) -> dict:
        if self.baseline is None:
            return {"method": "none: nvidia-smi is absent or unreadable"}
        return {"method": self.METHOD, "baseline_mib": self.baseline, "peak_mib": self.peak,
                "peak_delta_mib": None if self.peak is None else self.peak - self.baseline, "samples": self.samples}


def cpu_description() -> dict:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) / 2**20
    return {"model": model, "os_cpu_count": os.cpu_count(), "affinity": affinity, "memory_gib": mem_gib,
            "platform": platform.platform(), "python": platform.python_version()}


def nvidia_lib_dirs() -> list[str]:
    """``site-packages/nvidia/*/lib`` folders (cuBLAS, cuDNN, cuRAND, cuFFT, the CUDA runtime as torch's CUDA
    13 wheels install them): onnxruntime-gpu's CUDA EP dlopens these by soname, so they go on LD_LIBRARY_PATH."""
    roots = [*site.getsitepackages(), site.getusersitepackages()]
    dirs: list[str] = []
    for root in dict.fromkeys(roots):
        for pattern in ("nvidia/*/lib", "nvidia/*/lib64", "nvidia/*/*/lib"):
            for d in sorted(Path(root).glob(pattern)):
                if d.is_dir() and any(d.glob("*.so*")) and str(d) not in dirs:
                    dirs.append(str(d))
    return dirs


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, deadline_s: float) -> None:
        self.started = time.monotonic()
        self.deadline_s = deadline_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.deadline_s - self.elapsed()

    def budget(self, cap: float | None = None) -> float:
        """Seconds a child may take now: what is left before the report reserve, at most ``cap``."""
        left = self.remaining() - REPORT_RESERVE_S
        return max(0.0, left if cap is None else min(cap, left))


@dataclass
class ModelPlan:
    name: str
    kind: str  # "fixture" (random weights, built here) or "distilled"
    source: Path
    artifact: Path
    shape: str | None
    params: int
    built: threading.Event = field(default_factory=threading.Event)
    build_ok: bool = False


class Kit:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.precision = "fp32" if self.dry else "fp16"
        self.clock = Clock(args.deadline_s)
        self.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
        self.out = args.out.resolve()
        self.work = args.work.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "tasks").mkdir(exist_ok=True)
        self.jsonl = self.out / f"gpu-{self.stamp}.jsonl"
        self.md = self.out / f"gpu-{self.stamp}.md"
        self.log = self.out / f"gpu-{self.stamp}-kit.log"
        self.build_log = self.out / f"gpu-{self.stamp}-build.log"
        self.pytest_log = self.out / f"gpu-{self.stamp}-pytest.txt"
        self.jsonl.write_text("", encoding="utf-8")
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.children: set[subprocess.Popen] = set()
        self.pythonpath: list[str] = []
        self.lib_dirs: list[str] = []
        self.distilled: Path | None = None
        self.environment: dict = {}
        self.probe: dict = {}
        self.workload: dict = {}
        self.models: list[ModelPlan] = []
        self.planned_steps: list[str] = ["install.store", "install.wheel", "install.rerankrt", "install.providers",
                                         "gpu_tests", "workload"]
        self.fg_cpus: list[int] | None = None
        self.bg_cpus: list[int] | None = None
        self.measured: list[tuple[int, float]] = []  # (parameters, seconds) of the builds this run made
        self.stopping = False
        self.published = {**PUBLISHED_PAIRS_PER_S, **args.published}

    # -- records ---------------------------------------------------------------------------------
    def record(self, row: dict) -> dict:
        row = {"record": row.pop("record"), "t_s": round(self.clock.elapsed(), 2), **row}
        with self.lock:
            self.records.append(row)
            with self.jsonl.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
        return row

    def step(self, name: str, status: str, seconds: float | None = None, **details) -> dict:
        assert status in ("ran", "skipped", "failed"), status
        line = f"{name}: {status}" + (f" in {seconds:.1f} s" if seconds is not None else "")
        reason = details.get("reason") or details.get("error")
        say(line + (f" ({str(reason).splitlines()[0][:200]})" if reason else ""))
        return self.record({"record": "step", "step": name, "status": status,
                            "seconds": None if seconds is None else round(seconds, 3), **details})

    def steps(self) -> dict[str, dict]:
        return {r["step"]: r for r in self.records if r["record"] == "step"}

    # -- children --------------------------------------------------------------------------------
    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])])
        if self.lib_dirs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*self.lib_dirs,
                                                      *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "true", "RERANKRT_TUNE": "0", "RERANKRT_CACHE": str(self.work / "cache")})
        if self.distilled is not None:
            env["RERANKRT_DISTILLED"] = str(self.distilled)
        return env

    def run_command(self, command: list[str], timeout: float, log: Path,
                    extra_env: dict[str, str] | None = None) -> tuple[int | None, float, str]:
        """``(returncode or None on timeout, seconds, tail of its output)``; the whole group is killed on timeout."""
        started = time.perf_counter()
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(command)} (timeout {timeout:.0f} s)\n")
            fh.flush()
            proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env={**self.child_env(),
                                                                                    **(extra_env or {})},
                                    cwd=REPO_ROOT, start_new_session=True)
            with self.lock:
                self.children.add(proc)
            try:
                rc: int | None = proc.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                self.kill(proc)
                rc = None
            finally:
                with self.lock:
                    self.children.discard(proc)
        tail = ""
        with contextlib.suppress(OSError), log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - 3000))
            tail = fh.read().decode("utf-8", "replace")
        return rc, time.perf_counter() - started, tail

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def run_worker(self, name: str, task: dict, timeout: float, log: Path | None = None,
                   gpu_memory: bool = False, extra_env: dict[str, str] | None = None) -> dict:
        """Run ``kit.py worker`` on ``task``; its result dict, with ``ok``, ``seconds`` and, on failure, ``error``."""
        task_path = self.work / "tasks" / f"{name}.json"
        result_path = task_path.with_suffix(".result.json")
        result_path.unlink(missing_ok=True)
        task_path.write_text(json.dumps({**task, "result": str(result_path)}, default=str), encoding="utf-8")
        sampler = GpuMemorySampler() if gpu_memory else None
        with sampler or contextlib.nullcontext():
            rc, seconds, tail = self.run_command([sys.executable, str(KIT), "worker", str(task_path)], timeout,
                                                 log or self.log, extra_env)
        result: dict = {}
        with contextlib.suppress(OSError, ValueError):
            result = json.loads(result_path.read_text(encoding="utf-8"))
        result["seconds"] = seconds
        if sampler is not None:
            result["gpu_memory"] = sampler.result()
        if rc is None:
            result.update(ok=False, error=f"timed out after {timeout:.0f} s (killed)")
        elif rc != 0 or not result.get("ok"):
            result["ok"] = False
            result.setdefault("error", f"exit status {rc}; output tail: {tail[-800:]}")
        return result

    def kill_children(self) -> None:
        with self.lock:
            children = list(self.children)
        for proc in children:
            self.kill(proc)

    # -- install ---------------------------------------------------------------------------------
    def install(self) -> None:
        wp = _wheel_parts()
        joined: list[Path] = []
        store = self.args.wheel_store
        started = time.perf_counter()
        if store is None:
            self.step("install.store", "skipped", reason="no --wheel-store given")
        elif not store.is_dir() or not wp.items(store):
            self.step("install.store", "skipped", reason=f"{store} holds no parts")
        else:
            wholes, errors = [], []
            for name in wp.items(store):
                target = (self.work / "joined" / name if name.endswith(".whl") else self.work / "store" / name)
                marker = target.with_name(target.name + ".sha256")
                try:
                    manifest = wp.read_manifest(store / f"{name}{wp.MANIFEST_SUFFIX}")
                    if marker.is_file() and marker.read_text().strip() == manifest["sha256"] and target.exists():
                        wholes.append({"name": name, "kind": manifest["kind"], "path": str(target), "reused": True})
                    else:
                        wp.join(store, target, name)
                        marker.write_text(manifest["sha256"])
                        wholes.append({"name": name, "kind": manifest["kind"], "path": str(target), "reused": False})
                    joined.append(target)
                except (wp.PartsError, OSError) as exc:
                    errors.append(str(exc))
            self.step("install.store", "failed" if errors else "ran", time.perf_counter() - started, store=str(store),
                      wholes=wholes, **({"error": "; ".join(errors)} if errors else {}))

        wheels = [p for p in joined if p.name.startswith(ORT_WHEEL_PREFIX) and p.suffix == ".whl"]
        target = self.args.ort_target
        if not wheels:
            self.step("install.wheel", "skipped",
                      reason="no onnxruntime-gpu wheel joined from the store: children use the installed onnxruntime")
        else:
            wheel, started = wheels[-1], time.perf_counter()
            marker = target / ".rerankrt-kit-wheel"
            digest = wp.sha256_file(wheel)
            if marker.is_file() and marker.read_text().strip() == digest:
                self.step("install.wheel", "ran", time.perf_counter() - started, wheel=wheel.name, target=str(target),
                          reused=True)
                self.pythonpath.insert(0, str(target))
            else:
                shutil.rmtree(target, ignore_errors=True)
                command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
                           "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), str(wheel)]
                rc, seconds, tail = self.run_command(command, self.clock.budget(300), self.log)
                if rc == 0:
                    marker.write_text(digest)
                    self.pythonpath.insert(0, str(target))
                    self.step("install.wheel", "ran", seconds, wheel=wheel.name, target=str(target), reused=False)
                else:
                    self.step("install.wheel", "failed", seconds, wheel=wheel.name,
                              error=f"pip exit {rc}: {tail[-800:]}")
        self.lib_dirs = nvidia_lib_dirs()

        started = time.perf_counter()
        shim = make_shim(self.work / "shim")
        self.pythonpath.append(str(shim))
        check = [sys.executable, "-c", "import rerankrt, rerankrt.engine, rerankrt.export, sys; "
                 "print('rerankrt.engine from', rerankrt.engine.__file__)"]
        rc, seconds, tail = self.run_command(check, self.clock.budget(60), self.log)
        how = "PYTHONPATH shim"
        if rc != 0:  # the shim failed: an editable install (needs setuptools; writes into site-packages)
            self.pythonpath.remove(str(shim))
            rc, _, tail = self.run_command([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                                            "--no-build-isolation", "--disable-pip-version-check", "-e",
                                            str(REPO_ROOT)], self.clock.budget(120), self.log)
            how = "pip install --no-deps --no-build-isolation -e ."
        if rc == 0:
            self.step("install.rerankrt", "ran", time.perf_counter() - started, how=how, shim=str(shim))
        else:
            self.step("install.rerankrt", "failed", time.perf_counter() - started, how=how, error=tail[-800:])

        result = self.run_worker("probe", {"kind": "probe"}, self.clock.budget(120))
        self.probe = result
        ort_info = result.get("onnxruntime") or {}
        cuda_ep = result.get("cuda_ep") or {}
        details = {"providers": ort_info.get("providers"), "onnxruntime_version": ort_info.get("version"),
                   "onnxruntime_file": ort_info.get("file"), "cuda_ep": cuda_ep, "torch": result.get("torch"),
                   "versions": result.get("versions"), "pythonpath": self.pythonpath,
                   "ld_library_path_added": self.lib_dirs}
        if result.get("ok"):
            self.step("install.providers", "ran", result["seconds"], **details)
        else:
            self.step("install.providers", "failed", result["seconds"], error=result.get("error"), **details)

    def cuda_ep_usable(self) -> bool:
        return bool((self.probe.get("cuda_ep") or {}).get("usable"))

    def torch_cuda(self) -> bool:
        return bool((self.probe.get("torch") or {}).get("cuda_available"))

    # -- the gpu tests ---------------------------------------------------------------------------
    def gpu_tests(self) -> None:
        if self.args.skip_tests:
            self.step("gpu_tests", "skipped", reason="--skip-tests")
            return
        budget = self.clock.budget(self.args.pytest_budget_s)
        if budget < 10:
            self.step("gpu_tests", "skipped", reason=f"{budget:.0f} s left before the deadline")
            return
        basetemp = self.work / "pytest"
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                   "--basetemp", str(basetemp), "tests/test_gpu.py"]
        rc, seconds, _ = self.run_command(command, budget, self.pytest_log)
        text = self.pytest_log.read_text(encoding="utf-8", errors="replace")
        summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                    summary[-1] if summary else "")}
        outcome = {"returncode": rc, "counts": counts, "summary": summary[-1].strip("= ") if summary else None,
                   "log": self.pytest_log.name, "distilled": str(self.distilled) if self.distilled else None}
        if rc is None:
            self.step("gpu_tests", "failed", seconds, error=f"timed out after {budget:.0f} s", **outcome)
        elif rc in (0, 5):  # 5: nothing collected/selected
            self.step("gpu_tests", "ran", seconds, **outcome)
        else:
            self.step("gpu_tests", "failed", seconds, error=f"pytest exit {rc}: {outcome['summary']}", **outcome)

    # -- workload --------------------------------------------------------------------------------
    def make_workload(self) -> None:
        started = time.perf_counter()
        shapes = {m.name: (DRY_WORKLOAD_SHAPE if self.dry else WORKLOAD_SHAPE.get(m.shape or "", (10, 100)))
                  for m in self.models}
        n_queries = max((q for q, _ in shapes.values()), default=1)
        n_docs = max((d for _, d in shapes.values()), default=1)
        candidates = [self.args.data] if self.args.data else list(DATA_CANDIDATES)
        data = next((d for d in candidates if (d / "queries.jsonl").is_file() and (d / "corpus.jsonl").is_file()),
                    candidates[0])
        queries_file, corpus_file = data / "queries.jsonl", data / "corpus.jsonl"
        if queries_file.is_file() and corpus_file.is_file():
            rng = random.Random(0)
            queries = rng.sample(_read_texts(queries_file), n_queries)
            docs = rng.sample(_read_texts(corpus_file), n_docs)
            source = f"negconstraint ({data})"
        else:
            queries, docs = synthetic_texts(n_queries, n_docs, seed=0)
            source = (f"synthetic, seed 0 (no negconstraint in {', '.join(map(str, candidates))}): queries 6-53 "
                      "words, documents 34-400 words")
        for name, (nq, nd) in shapes.items():
            pairs = [(q, d) for q in queries[:nq] for d in docs[:nd]]
            path = self.work / f"pairs-{name}.json"
            path.write_text(json.dumps({"pairs": pairs, "groups": [i // nd for i in range(len(pairs))]}),
                            encoding="utf-8")
            self.workload[name] = {"path": str(path), "queries": nq, "docs_per_query": nd, "pairs": len(pairs)}
        words = [len(d.split()) for d in docs]
        self.step("workload", "ran", time.perf_counter() - started, source=source, max_length=MAX_LENGTH,
                  per_model={k: {kk: v[kk] for kk in ("queries", "docs_per_query", "pairs")}
                             for k, v in self.workload.items()},
                  doc_words={"median": statistics.median(words), "max": max(words)} if words else None)

    # -- models ----------------------------------------------------------------------------------
    def plan_models(self) -> None:
        sizes = [s.strip() for s in self.args.sizes.split(",") if s.strip()]
        unknown = [s for s in sizes if s not in SHAPES]
        if unknown:
            raise SystemExit(f"unknown --sizes {unknown}; choose from {list(SHAPES)}")
        if self.distilled is not None:
            shape = shape_of(self.distilled)
            self.models.append(ModelPlan(DISTILLED_NAME, "distilled", self.distilled,
                                         self.work / "artifacts" / DISTILLED_NAME, shape,
                                         approx_params(shape) if shape else 17_000_000))
        for size in sizes:
            self.models.append(ModelPlan(size, "fixture", self.work / "fixtures" / size,
                                         self.work / "artifacts" / size, size, approx_params(size)))
        for m in self.models:
            self.planned_steps += [f"build.{m.name}", f"bench.{m.name}"]

    def resolve_distilled(self) -> None:
        if self.args.no_distilled:
            return
        # what this run joined from the store first: it was carried on purpose
        candidates = ([self.args.distilled] if self.args.distilled else
                      [self.work / "store" / DISTILLED_ITEM, *DISTILLED_CANDIDATES])
        self.distilled = next((Path(c).resolve() for c in candidates if (Path(c) / "modules.json").is_file()), None)
        if self.distilled is None:
            say(f"no distilled 17m found in {', '.join(map(str, candidates))}: its build and bench are skipped")

    def predicted(self, m: ModelPlan) -> float:
        """Seconds the build of ``m`` should take: scaled from the largest build this run measured when that one
        has ≥ 1/10 of ``m``'s parameters (its whole time scaled, fixed costs included: an overestimate), else
        the guess above (a small model's time is mostly fixed costs and says nothing about a 60× larger one)."""
        comparable = [(p, sec) for p, sec in self.measured if p >= 0.1 * m.params]
        if comparable:
            params, seconds = max(comparable)
            return 10.0 + 1.3 * seconds * m.params / params
        return GUESS_BUILD_OVERHEAD_S + GUESS_BUILD_S_PER_MPARAM * m.params / 1e6

    def tokenizer_file(self) -> Path | None:
        for candidate in (SHARED_TOKENIZER, *(p / "tokenizer.json" for p in [self.distilled] if p)):
            if candidate.is_file():
                return candidate
        return None  # tests/builders.py trains a ModernBERT-style tokenizer (a few seconds)

    def reusable_pytest_artifact(self) -> Path | None:
        """The distilled artifact the gpu tests' fixture exported (fp32, fp16, int8), if it is there."""
        for manifest in sorted((self.work / "pytest").glob("*/distilled-artifact/manifest.json")):
            with contextlib.suppress(OSError, ValueError):
                if "fp16" in json.loads(manifest.read_text(encoding="utf-8"))["graphs"]:
                    return manifest.parent
        return None

    def build(self, m: ModelPlan, cpus: list[int] | None, log: Path, background: bool = False) -> None:
        """Fixture (random weights) and export of one model, or a recorded skip; sets ``m.built``."""
        name = f"build.{m.name}"
        try:
            if m.kind == "distilled" and (reused := self.reusable_pytest_artifact()) is not None:
                m.artifact = reused
                m.build_ok = True
                self.step(name, "ran", 0.0, reused=f"the gpu tests' export ({reused})", artifact=str(reused))
                return
            predicted = self.predicted(m)
            if self.clock.budget() < predicted + MIN_BENCH_S:
                self.step(name, "skipped", reason=f"predicted build {predicted:.0f} s + bench ≥ {MIN_BENCH_S:.0f} s "
                          f"> {self.clock.budget():.0f} s left before the deadline", predicted_s=round(predicted, 1))
                return
            task = {"kind": "build", "model": m.name, "fixture": m.kind == "fixture", "size": m.shape,
                    "source": str(m.source), "artifact": str(m.artifact), "cpus": cpus,
                    "threads": len(cpus) if cpus else None,
                    "tokenizer_file": str(self.tokenizer_file() or ""), "precisions": ["fp32", "fp16"],
                    # the distilled model's gate is the real one (default pairs), except in a dry run
                    "gate_pairs": GATE_PAIRS_RANDOM if m.kind == "fixture" or self.dry else None}
            # A background build never touches the GPU (the export's fp16 gate would check on CUDA too): the
            # measurements beside it have the GPU to themselves, and nvidia-smi's memory readings stay theirs.
            hide_gpu = {"CUDA_VISIBLE_DEVICES": ""} if background else None
            result = self.run_worker(f"build-{m.name}", task, self.clock.budget() - MIN_BENCH_S, log,
                                     extra_env=hide_gpu)
            details = {k: result.get(k) for k in ("fixture_s", "export_s", "reused", "params", "parity", "graph_mib",
                                                  "tokenizer", "threads", "cpus")}
            details["predicted_s"] = round(predicted, 1)
            details["gpu_hidden"] = background
            if result["ok"]:
                m.build_ok = True
                if result.get("params"):
                    m.params = int(result["params"])
                if not result.get("reused"):
                    self.measured.append((m.params, result["seconds"]))
                self.step(name, "ran", result["seconds"], **details)
            elif self.stopping:
                self.step(name, "skipped", result["seconds"], reason="stopped at the deadline while it ran", **details)
            else:
                self.step(name, "failed", result["seconds"], error=result.get("error"), **details)
        finally:
            m.built.set()

    def builder(self, models: list[ModelPlan]) -> None:
        for m in models:
            if self.stopping:
                m.built.set()
                continue
            self.build(m, self.bg_cpus, self.build_log, background=True)

    # -- measurements ----------------------------------------------------------------------------
    def option_sets(self) -> list[tuple[str, dict | None, str | None]]:
        """``(label, backend_options, why skipped)`` of the rerankrt configurations."""
        if self.device == "cpu":
            return [("plain", {"io_binding": False}, None), ("io_binding", {"io_binding": True}, None),
                    ("io_binding+cuda_graph", {"io_binding": True, "cuda_graph": True}, "CUDA graphs are CUDA-only")]
        return [("plain", {"io_binding": False, "cuda_graph": False}, None),
                ("io_binding", {"io_binding": True, "cuda_graph": False}, None),
                ("io_binding+cuda_graph", {"io_binding": True, "cuda_graph": True},
                 "onnxruntime refuses graph capture for these graphs: their shape computations run on the CPU "
                 "(measured: gpu-20261204-1138; tests/test_gpu.py checks the refusal)")]

    def bench(self, m: ModelPlan) -> None:
        name = f"bench.{m.name}"
        if not m.build_ok:
            self.step(name, "skipped", reason=f"build.{m.name} did not produce an artifact")
            return
        if self.clock.budget() < MIN_BENCH_S:
            self.step(name, "skipped", reason=f"{self.clock.budget():.0f} s left before the deadline")
            return
        started = time.perf_counter()
        work = self.workload[m.name]
        pairs_path = Path(work["path"])
        groups = json.loads(pairs_path.read_text(encoding="utf-8"))["groups"]
        published = self.published.get(m.shape or "")
        concurrent = [o.name for o in self.models if o is not m and not o.built.is_set()] if self.bg_cpus else []
        base = {"model": m.name, "shape": m.shape, "kind": m.kind, "pairs": work["pairs"], "device": self.device,
                "published_pairs_per_s": published,
                "published_source": (PUBLISHED_SOURCE if PUBLISHED_PAIRS_PER_S.get(m.shape or "") == published
                                     else "--published") if published else None,
                "builds_running_meanwhile": concurrent}
        ref_path, st_path = self.work / f"scores-{m.name}-ref.npy", self.work / f"scores-{m.name}-st.npy"
        for p in (ref_path, st_path):
            p.unlink(missing_ok=True)
        torch_ok = self.dry or self.torch_cuda()
        st_pps = None
        if not torch_ok:
            for system in ("torch-fp32-reference", "st-bf16"):
                self.record({"record": "measurement", **base, "system": system, "status": "skipped",
                             "reason": "torch sees no CUDA device"})
        else:
            task = {"kind": "torch", "model_dir": str(m.source), "pairs": str(pairs_path), "device": self.device,
                    "attention": list(ATTENTION_TRIES), "batch_sizes": list(DRY_ST_BATCH_SIZES if self.dry
                                                                             else ST_BATCH_SIZES),
                    "passes": self.args.passes, "reference_out": str(ref_path), "st_out": str(st_path)}
            r = self.run_worker(f"torch-{m.name}", task, self.clock.budget(self.args.child_cap_s), gpu_memory=True)
            ref, st = r.get("reference") or {}, r.get("st") or {}
            self.record({"record": "measurement", **base, "system": "torch-fp32-reference",
                         "status": "ran" if ref_path.is_file() else "failed",
                         **({} if ref_path.is_file() else {"error": r.get("error")}),
                         "pairs_per_s": ref.get("pairs_per_s"), "attention": ref.get("attention"),
                         "batch_size": ref.get("batch_size"), "load_s": ref.get("load_s")})
            st_pps = st.get("pairs_per_s") if st_path.is_file() else None
            st_row = {"record": "measurement", **base, "system": "st-bf16",
                      "status": "ran" if st_pps else "failed", "pairs_per_s": st_pps,
                      "ratio_to_published": ratio(st_pps, published), "batch_size": st.get("batch_size"),
                      "batch_size_trials_s": st.get("trials_s"), "pass_times_s": st.get("pass_times_s"),
                      "attention": st.get("attention"), "dtypes": st.get("dtypes"), "load_s": st.get("load_s"),
                      "gpu_memory": {**(r.get("gpu_memory") or {}), "note": "the torch process: fp32 reference, then "
                                     "st; st's own peak is torch_cuda_max_memory_allocated_mib"},
                      "torch_cuda_max_memory_allocated_mib": st.get("torch_cuda_max_memory_allocated_mib"),
                      "torch_cuda_max_memory_reserved_mib": st.get("torch_cuda_max_memory_reserved_mib")}
            if not st_pps:
                st_row["error"] = r.get("error")
            if st_pps and ref_path.is_file():
                st_row["fidelity_vs_fp32_reference"] = fidelity(np.load(ref_path), np.load(st_path), groups)
            self.record(st_row)

        for label, options, why in self.option_sets():
            row = {"record": "measurement", **base, "system": f"rerankrt-{self.precision}", "config": label,
                   "backend_options": options, "precision": self.precision,
                   "providers_asked": CUDA_PROVIDERS if self.device == "cuda" else None}
            if why:
                self.record({**row, "status": "skipped", "reason": why})
                continue
            if self.device == "cuda" and not self.cuda_ep_usable():
                self.record({**row, "status": "skipped", "reason": "the CUDA execution provider is not usable: "
                             + str((self.probe.get("cuda_ep") or {}).get("reason"))})
                continue
            budget = self.clock.budget(self.args.child_cap_s)
            if budget < 10:
                self.record({**row, "status": "skipped", "reason": f"{budget:.0f} s left before the deadline"})
                continue
            out_path = self.work / f"scores-{m.name}-rerankrt-{label}.npy"
            out_path.unlink(missing_ok=True)
            task = {"kind": "rerankrt", "artifact": str(m.artifact), "pairs": str(pairs_path), "device": self.device,
                    "precision": self.precision, "options": options, "passes": self.args.passes,
                    "providers": CUDA_PROVIDERS if self.device == "cuda" else None, "scores_out": str(out_path)}
            r = self.run_worker(f"rerankrt-{m.name}-{label}", task, budget, gpu_memory=True)
            pps = r.get("pairs_per_s") if r.get("ok") else None
            row.update({"status": "ran" if pps else "failed", "pairs_per_s": pps, "st_pairs_per_s": st_pps,
                        "ratio_to_st": ratio(pps, st_pps), "ratio_to_published": ratio(pps, published),
                        "gpu_memory": r.get("gpu_memory"),
                        **{k: r.get(k) for k in ("load_s", "first_call_s", "warmup_s", "pass_times_s",
                                                 "repeat_max_abs_delta", "described", "policy", "process_s")}})
            if not pps:
                row["error"] = r.get("error")
            if pps and ref_path.is_file():
                row["fidelity_vs_fp32_reference"] = fidelity(np.load(ref_path), np.load(out_path), groups)
            if pps and st_path.is_file():
                row["agreement_vs_st_bf16"] = fidelity(np.load(st_path), np.load(out_path), groups)
            self.record(row)
        seconds = time.perf_counter() - started
        rows = [r for r in self.records if r["record"] == "measurement" and r["model"] == m.name]
        ran = sum(r["status"] == "ran" for r in rows)
        self.step(name, "ran" if ran else "failed", seconds, measurements_ran=ran, measurements=len(rows),
                  **({} if ran else {"error": "no measurement ran"}))

    # -- the whole run ---------------------------------------------------------------------------
    def run(self) -> int:
        self.environment = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "stamp": self.stamp,
                            "dry_run": self.dry, "device": self.device, "precision": self.precision,
                            "deadline_s": self.args.deadline_s, "cpu": cpu_description(),
                            "nvidia_smi": (nvidia_smi("--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                                      "power.limit", "--format=csv") or "absent").strip()}
        self.record({"record": "run", **self.environment, "published_pairs_per_s": self.published,
                     "args": {k: str(v) for k, v in vars(self.args).items()}})
        write_nvidia_smi(self.out / "nvidia-smi.txt")
        builder: threading.Thread | None = None
        try:
            self.install()
            self.write_markdown()
            self.resolve_distilled()
            self.plan_models()
            self.make_workload()
            self.split_cores()
            fixtures = [m for m in self.models if m.kind == "fixture"]
            if self.bg_cpus:  # fixtures build and export on the other half of the cores meanwhile
                builder = threading.Thread(target=self.builder, args=(fixtures,), daemon=True)
                builder.start()
            self.gpu_tests()
            self.write_markdown()
            for m in self.models:
                if m.kind == "distilled" or builder is None:
                    self.build(m, None, self.build_log)
                else:
                    m.built.wait(timeout=max(0.0, self.clock.budget()))
                    if not m.built.is_set():
                        self.step(f"bench.{m.name}", "skipped", reason="its build had not finished by the deadline")
                        continue
                self.bench(m)
                self.write_markdown()
        except Exception as exc:  # noqa: BLE001 - the report is written whatever broke
            self.record({"record": "error", "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-4000:]})
            say(f"kit error: {type(exc).__name__}: {exc}")
        finally:
            self.stopping = True
            self.kill_children()
            if builder is not None:
                builder.join(timeout=20)
            done = self.steps()
            for name in self.planned_steps:
                if name not in done:
                    self.step(name, "skipped", reason="not reached before the deadline (or an earlier error)")
            self.record({"record": "summary", **self.summary()})
            self.write_markdown()
            trim(self.log)
            trim(self.build_log)
        say(f"wrote {self.jsonl}, {self.md}")
        return 0

    def split_cores(self) -> None:
        """Half the cores build (export is CPU-bound), the other half measure, when there are enough of them."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        mode = self.args.overlap_builds
        if mode == "off" or len(cpus) < 2 or (mode == "auto" and len(cpus) < 8) or \
                not any(m.kind == "fixture" for m in self.models):
            return
        half = len(cpus) // 2
        self.fg_cpus, self.bg_cpus = cpus[:half], cpus[half:]
        try:
            os.sched_setaffinity(0, self.fg_cpus)  # children of the foreground inherit it
        except OSError as exc:
            say(f"cannot pin the cores ({exc}); builds overlap measurements unpinned")
            self.fg_cpus = None

    def summary(self) -> dict:
        steps = self.steps()
        rows = [r for r in self.records if r["record"] == "measurement" and r["status"] == "ran"]
        best: dict[str, dict] = {}
        for r in rows:
            if r["system"].startswith("rerankrt") and (r["model"] not in best or
                                                       r["pairs_per_s"] > best[r["model"]]["pairs_per_s"]):
                best[r["model"]] = r
        return {"elapsed_s": round(self.clock.elapsed(), 1), "deadline_s": self.args.deadline_s,
                "steps": {k: v["status"] for k, v in steps.items()},
                "best_rerankrt": {k: {"config": v["config"], "pairs_per_s": v["pairs_per_s"],
                                      "ratio_to_st": v.get("ratio_to_st"),
                                      "ratio_to_published": v.get("ratio_to_published")} for k, v in best.items()}}

    # -- the report ------------------------------------------------------------------------------
    def write_markdown(self) -> None:
        with self.lock:
            records = list(self.records)
        self.md.write_text("\n".join(markdown(records, self.probe)) + "\n", encoding="utf-8")


def write_nvidia_smi(path: Path) -> None:
    full = nvidia_smi()
    if full is None:
        path.write_text("nvidia-smi is absent on this machine (no NVIDIA driver): nothing to record.\n",
                        encoding="utf-8")
        return
    path.write_text(full + "\n\n===== nvidia-smi -q\n" + (nvidia_smi("-q") or ""), encoding="utf-8")


def trim(path: Path, keep: int = 8 << 20) -> None:
    """Keep the last ``keep`` bytes of a log (what comes back from the device is capped at 16 MiB a file)."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > keep:
            with path.open("rb") as fh:
                fh.seek(-keep, os.SEEK_END)
                tail = fh.read()
            path.write_bytes(b"[... trimmed ...]\n" + tail)


def fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(records: list[dict], probe: dict) -> list[str]:
    run = next((r for r in records if r["record"] == "run"), {})
    steps = [r for r in records if r["record"] == "step"]
    rows = [r for r in records if r["record"] == "measurement"]
    providers = next((r for r in steps if r["step"] == "install.providers"), {})
    cpu = run.get("cpu", {})
    lines = [f"# GPU device check — {run.get('stamp', '')}" + (" (CPU dry run)" if run.get("dry_run") else ""), "",
             f"Command: `{run.get('command', '')}`", "", "## Machine", "",
             f"- GPU (nvidia-smi): {run.get('nvidia_smi', 'absent')}".replace("\n", "; "),
             f"- CPU: {cpu.get('model')} — os.cpu_count() {cpu.get('os_cpu_count')}, memory "
             f"{fmt(cpu.get('memory_gib'))} GiB; {cpu.get('platform')}",
             f"- onnxruntime: {providers.get('onnxruntime_version')} from `{providers.get('onnxruntime_file')}`; "
             f"providers {providers.get('providers')}; CUDA EP in a session: {providers.get('cuda_ep')}",
             f"- torch: {providers.get('torch')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in (providers.get("versions") or {}).items()), ""]
    lines += ["## Steps", "", "| step | status | seconds | note |", "|---|---|---:|---|"]
    for s in steps:
        note = s.get("reason") or s.get("error") or _step_note(s)
        lines.append(f"| {s['step']} | {s['status']} | {fmt(s.get('seconds'))} | "
                     f"{str(note).replace('|', '/').replace(chr(10), ' ')[:300]} |")
    if rows:
        lines += ["", "## Throughput and fidelity", "",
                  "| model | system | config | status | pairs/s | × st | × published | max \\|Δ\\| vs fp32 ref | "
                  "Spearman | top-10 | GPU mem MiB | load s | note |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            f = r.get("fidelity_vs_fp32_reference") or {}
            mem = (r.get("gpu_memory") or {}).get("peak_delta_mib")
            if r["system"] == "st-bf16" and r.get("torch_cuda_max_memory_allocated_mib") is not None:
                mem = r["torch_cuda_max_memory_allocated_mib"]
            note = r.get("reason") or r.get("error") or ""
            if r["system"] == "st-bf16" and r.get("attention"):
                note = f"attention {r['attention'].get('loaded')}, batch {r.get('batch_size')}"
            lines.append(f"| {r['model']} | {r['system']} | {r.get('config', '')} | {r['status']} | "
                         f"{fmt(r.get('pairs_per_s'))} | {fmt(r.get('ratio_to_st'), '.2f')} | "
                         f"{fmt(r.get('ratio_to_published'), '.2f')} | {fmt(f.get('max_abs_delta'), '.2g')} | "
                         f"{fmt(f.get('spearman'), '.5f')} | {fmt(f.get('top10_agreement'), '.3f')} | "
                         f"{fmt(mem, '.0f')} | {fmt(r.get('load_s'), '.2f')} | "
                         f"{str(note).replace('|', '/').replace(chr(10), ' ')[:200]} |")
    workload = next((s for s in steps if s["step"] == "workload"), {})
    lines += ["", "## Notes", "",
              f"- Workload: {workload.get('source', '—')}; every system scores the same pairs (max_length "
              f"{MAX_LENGTH}); per model {workload.get('per_model')}.",
              f"- × published: pairs/s ÷ "
              f"{', '.join(f'{v:,.0f} ({k})' for k, v in run.get('published_pairs_per_s', {}).items())} — "
              f"{PUBLISHED_SOURCE}; other hardware and another workload, so only a rough anchor. st's own row "
              "says how this machine and workload compare with that figure.",
              "- × st: rerankrt's pairs/s ÷ sentence-transformers bf16 pairs/s of the same run (st at its fastest "
              "batch size of the trials). Fidelity: against the torch fp32 CrossEncoder (sdpa, TF32 off) of the "
              "same model on the same pairs.",
              f"- GPU memory: rerankrt rows: {GpuMemorySampler.METHOD}; st rows: torch.cuda.max_memory_allocated "
              "during st's passes (the allocator's peak, without the CUDA context).",
              "- load s: Reranker.from_pretrained (session creation; for st, CrossEncoder loading).",
              "- Random-weight fixtures have the real shapes (speed); judge fidelity on 17m-distilled."]
    return lines


def _step_note(s: dict) -> str:
    keys = ("how", "providers", "counts", "reused", "export_s", "measurements_ran", "wheel", "wholes")
    return "; ".join(f"{k}: {s[k]}" for k in keys if s.get(k) not in (None, [], {}))[:300]


# ---------------------------------------------------------------------------------------------
# Helpers the driver uses.
# ---------------------------------------------------------------------------------------------
def _wheel_parts():
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import wheel_parts

    return wheel_parts


def make_shim(directory: Path) -> Path:
    """A folder that makes ``rerankrt`` importable from this checkout through PYTHONPATH alone.

    Why not ``pip install -e .``: on the device there is no network (build isolation would fetch
    setuptools), ``--no-build-isolation`` depends on the image's setuptools, and an install writes into a
    site-packages that every later call shares. The shim is the package mapping of pyproject.toml
    (``rerankrt`` = engine/_rerankrt, ``rerankrt.engine`` = engine/, ``rerankrt.export`` = export/) as
    symbolic links: nothing is built or copied, and edits in the checkout are what runs.
    """
    package = directory / "rerankrt"
    shutil.rmtree(directory, ignore_errors=True)
    package.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "engine" / "_rerankrt" / "__init__.py", package / "__init__.py")
    (package / "engine").symlink_to(REPO_ROOT / "engine", target_is_directory=True)
    (package / "export").symlink_to(REPO_ROOT / "export", target_is_directory=True)
    return directory


def _read_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


_WORDS = ("the of and to in is was for on as with by at from that which this are were be has have an or not "
          "river mountain city history science protein cell energy market music language island season school "
          "paper study result model network water light century village player team government church species "
          "disease treatment patient effect analysis gene structure policy housing trend theme justice trial "
          "municipality introduction profile excluding without compare efforts organizations crisis").split()


def synthetic_texts(n_queries: int, n_docs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Fixed-seed text with negconstraint's lengths: queries 6-53 words (median ~26), documents 34-400 words
    (median ~100, a long tail)."""
    rng = random.Random(seed)

    def text(n_words: int) -> str:
        words = [rng.choice(_WORDS) if rng.random() < 0.85 else
                 rng.choice([str(rng.randint(1, 2030)), "".join(rng.choices("bcdfghjklmnprstvz", k=rng.randint(3, 8)))])
                 for _ in range(n_words)]
        return " ".join(words).capitalize() + "."

    queries = [text(min(53, max(6, int(rng.gauss(26, 9))))) for _ in range(n_queries)]
    docs = [text(min(400, max(34, int(rng.lognormvariate(math.log(100), 0.35))))) for _ in range(n_docs)]
    return queries, docs


# ---------------------------------------------------------------------------------------------
# Workers: ``kit.py worker TASK.json``, one system or job per process.
# ---------------------------------------------------------------------------------------------
def _load_pairs(path: str) -> list[tuple[str, str]]:
    return [(q, d) for q, d in json.loads(Path(path).read_text(encoding="utf-8"))["pairs"]]


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("rerankrt", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "sentence-transformers",
                "onnx", "tokenizers", "numpy", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cuda_ep_check() -> dict:
    """Whether an onnxruntime session asked for the CUDA EP really got it (a GPU build falls back to the CPU
    when its CUDA libraries or the GPU are missing)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"usable": False, "reason": f"CUDAExecutionProvider not in {ort.get_available_providers()}"}
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "cuda_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        out = session.run(None, {"x": np.array([1.0, 2.0], np.float32)})[0]
    except Exception as exc:  # noqa: BLE001 - recorded
        return {"usable": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    got = session.get_providers()
    return {"usable": got[0] == "CUDAExecutionProvider" and out.tolist() == [2.0, 4.0], "session_providers": got,
            **({} if got[0] == "CUDAExecutionProvider" else
               {"reason": "compiled in but did not load (CUDA/cuDNN libraries, driver or GPU missing?)"})}


def work_probe(task: dict) -> dict:
    out: dict = {"versions": _versions(), "executable": sys.executable}
    try:
        import onnxruntime as ort

        out["onnxruntime"] = {"version": ort.__version__, "file": ort.__file__, "device": ort.get_device(),
                              "providers": ort.get_available_providers()}
        out["cuda_ep"] = cuda_ep_check()
    except Exception as exc:  # noqa: BLE001 - recorded
        out["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}"}
        out["cuda_ep"] = {"usable": False, "reason": str(exc)}
    try:
        import rerankrt
        import rerankrt.engine

        out["rerankrt"] = {"version": rerankrt.__version__, "file": rerankrt.engine.__file__}
    except Exception as exc:  # noqa: BLE001 - recorded
        out["rerankrt"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import torch

        info: dict = {"version": torch.__version__, "cuda": torch.version.cuda,
                      "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                        memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        out["torch"] = info
    except Exception as exc:  # noqa: BLE001 - recorded
        out["torch"] = {"error": f"{type(exc).__name__}: {exc}", "cuda_available": False}
    return out


def _safetensors_params(directory: Path) -> int:
    """Parameters counted from the safetensors headers (no torch)."""
    total = 0
    for file in directory.rglob("*.safetensors"):
        with file.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def work_build(task: dict) -> dict:
    sys.path.insert(1, str(TESTS))
    import torch

    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    out: dict = {"threads": task.get("threads"), "cpus": task.get("cpus")}
    source, artifact = Path(task["source"]), Path(task["artifact"])
    if task["fixture"]:
        if (source / "modules.json").is_file():
            out["fixture_s"], out["fixture_reused"] = 0.0, True
        else:
            from builders import make_ettin_fixture

            tokenizer = Path(task["tokenizer_file"]) if task.get("tokenizer_file") else None
            out["tokenizer"] = str(tokenizer) if tokenizer else "built by tests/builders.py"
            started = time.perf_counter()
            partial = source.with_name(source.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            make_ettin_fixture(partial, task["size"], tokenizer_file=tokenizer, max_length=7999)
            shutil.rmtree(source, ignore_errors=True)
            partial.rename(source)
            out["fixture_s"] = time.perf_counter() - started
    out["params"] = _safetensors_params(source)
    manifest_file = artifact / "manifest.json"
    wanted = set(task["precisions"])
    if manifest_file.is_file() and wanted <= set(json.loads(manifest_file.read_text())["graphs"]) \
            and not out.get("fixture_s"):
        out["export_s"], out["reused"] = 0.0, True
    else:
        from rerankrt.engine.agreement import Tolerance
        from rerankrt.export.pipeline import export

        tolerances = {"fp16": Tolerance(**RANDOM_FP16_TOLERANCE)} if task["fixture"] else None
        started = time.perf_counter()
        export(str(source), artifact, precisions=task["precisions"], gate_pairs=task.get("gate_pairs"),
               long_lengths=(), allow_parity_failure=True, tolerances=tolerances, overwrite=True,
               threads=task.get("threads"), log=print)
        out["export_s"] = time.perf_counter() - started
    manifest = json.loads(manifest_file.read_text())
    out["parity"] = {p: {k: r.get(k) for k in ("max_rel_delta", "spearman", "top10_agreement", "passed")}
                     for p, r in manifest.get("parity", {}).get("results", {}).items()}
    out["graph_mib"] = {p: round((int(g["size_bytes"]) + sum(int(d["size_bytes"]) for d in g.get("data_files", [])))
                                 / 2**20, 1) for p, g in manifest["graphs"].items()}
    return out


def _attention_of(model) -> str | None:
    module = model[0]
    auto = getattr(module, "auto_model", None) or getattr(module, "model", None)
    config = getattr(auto, "config", None)
    return getattr(config, "_attn_implementation", None)


def work_torch(task: dict) -> dict:
    import gc

    import torch
    from sentence_transformers import CrossEncoder

    device, pairs = task["device"], _load_pairs(task["pairs"])
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32, not TF32
        torch.backends.cudnn.allow_tf32 = False

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    out: dict = {}
    started = time.perf_counter()
    ref_model = CrossEncoder(task["model_dir"], device=device, max_length=MAX_LENGTH,
                             model_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"})
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    reference = ref_model.predict(pairs, batch_size=64, show_progress_bar=False)
    sync()
    seconds = time.perf_counter() - started
    np.save(task["reference_out"], np.asarray(reference, np.float32))
    out["reference"] = {"pairs_per_s": len(pairs) / seconds, "batch_size": 64, "load_s": load_s,
                        "attention": _attention_of(ref_model), "note": "one pass, cold (a reference, not a timing)"}
    del ref_model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    attempts, model = [], None
    for impl in task["attention"]:
        started = time.perf_counter()
        try:
            model = CrossEncoder(task["model_dir"], device=device, max_length=MAX_LENGTH,
                                 model_kwargs={"dtype": torch.bfloat16, "attn_implementation": impl})
        except Exception as exc:  # noqa: BLE001 - the next implementation is tried, the reason kept
            attempts.append({"requested": impl, "loaded": False, "error": f"{type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300]}"})
            continue
        attempts.append({"requested": impl, "loaded": True})
        load_s = time.perf_counter() - started
        break
    if model is None:
        raise RuntimeError(f"no attention implementation loaded: {attempts}")
    batch_sizes = [int(b) for b in task["batch_sizes"]]

    def timed(batch_size: int) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
        sync()
        return time.perf_counter() - started, np.asarray(scores, np.float32)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup_s, _ = timed(batch_sizes[0])
    trials = {bs: timed(bs)[0] for bs in batch_sizes} if len(batch_sizes) > 1 else {}
    best = min(trials, key=trials.__getitem__) if trials else batch_sizes[0]
    passes = []
    for _ in range(max(1, int(task["passes"]))):
        seconds, scores = timed(best)
        passes.append(seconds)
    np.save(task["st_out"], scores)
    out["st"] = {"pairs_per_s": len(pairs) / statistics.median(passes), "batch_size": best,
                 "trials_s": {str(k): v for k, v in trials.items()}, "pass_times_s": passes, "warmup_s": warmup_s,
                 "load_s": load_s, "attention": {"tried": task["attention"], "attempts": attempts,
                                                 "loaded": _attention_of(model)},
                 "dtypes": sorted({str(p.dtype) for p in model.parameters()})}
    if cuda:
        out["st"]["torch_cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["st"]["torch_cuda_max_memory_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    return out


def work_rerankrt(task: dict) -> dict:
    import dataclasses

    import onnxruntime as ort

    from rerankrt.engine import Reranker

    pairs = _load_pairs(task["pairs"])
    started = time.perf_counter()
    reranker = Reranker.from_pretrained(task["artifact"], precision=task["precision"], backend="onnxruntime",
                                        device=task["device"], backend_options=task["options"],
                                        providers=task.get("providers"), max_length=MAX_LENGTH)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    reranker.predict(pairs[:1])
    first_call_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = reranker.predict(pairs)  # CUDA graph captures and cuDNN/cuBLAS choices happen here
    warmup_s = time.perf_counter() - started
    passes, scores = [], warm
    for _ in range(max(1, int(task["passes"]))):
        started = time.perf_counter()
        scores = reranker.predict(pairs)
        passes.append(time.perf_counter() - started)
    np.save(task["scores_out"], np.asarray(scores, np.float32))
    policy = reranker.policy
    return {"pairs_per_s": len(pairs) / statistics.median(passes), "pass_times_s": passes, "load_s": load_s,
            "first_call_s": first_call_s, "warmup_s": warmup_s,
            "repeat_max_abs_delta": float(np.abs(np.asarray(scores) - np.asarray(warm)).max()),
            "described": json.loads(json.dumps(reranker.backend.describe(), default=str)),
            "policy": dataclasses.asdict(policy) if dataclasses.is_dataclass(policy) and not isinstance(policy, type)
            else str(policy),
            "onnxruntime": {"version": ort.__version__, "file": ort.__file__}}


WORKERS = {"probe": work_probe, "build": work_build, "torch": work_torch, "rerankrt": work_rerankrt}


def worker_main(task_path: Path) -> int:
    task = json.loads(task_path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    try:
        if task.get("cpus") and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, task["cpus"])
        result = WORKERS[task["kind"]](task)
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the driver records it and carries on
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    result["process_s"] = time.perf_counter() - started
    Path(task["result"]).write_text(json.dumps(result, default=str), encoding="utf-8")
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kit.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--out", type=Path, required=True, help="where the report files go ($OUT on the device)")
    parser.add_argument("--deadline-s", type=float, default=480.0,
                        help="the kit ends within this many seconds of starting (default 480); steps that no "
                             "longer fit are skipped and recorded")
    parser.add_argument("--wheel-store", type=Path, help="the wheel_parts.py store holding the onnxruntime-gpu "
                        "wheel (and optionally the distilled 17m) in parts, e.g. /tmp/rerankrt-wheels")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: CPU execution provider, fp32, tiny "
                        "model, 2 queries × 10 documents, 1 timed pass; checks the kit, measures nothing")
    parser.add_argument("--sizes", help=f"random-weight Ettin sizes to build and measure, in order (default "
                        f"{','.join(DEFAULT_SIZES)}; --dry-run: tiny; '' for none); from {','.join(SHAPES)}")
    parser.add_argument("--distilled", type=Path, help="the distilled 17m CrossEncoder folder (default: "
                        f"the store's {DISTILLED_ITEM} whole, benchmarks/gpu/carry/{DISTILLED_ITEM}, then "
                        f"../shared/models/{DISTILLED_ITEM})")
    parser.add_argument("--no-distilled", action="store_true", help="leave the distilled 17m out")
    parser.add_argument("--data", type=Path, help="negconstraint folder (queries.jsonl, corpus.jsonl); default: "
                        "../shared/data/negconstraint, then benchmarks/gpu/carry/negconstraint; synthetic text "
                        "(fixed seed) when none is there")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"fixtures, artifacts, scores "
                        f"(default {DEFAULT_WORK}; reused by a rerun on a warm machine)")
    parser.add_argument("--ort-target", type=Path, default=DEFAULT_ORT_TARGET,
                        help=f"where the onnxruntime-gpu wheel is installed (default {DEFAULT_ORT_TARGET})")
    parser.add_argument("--passes", type=int, help="timed passes per system (default 3; --dry-run 1)")
    parser.add_argument("--pytest-budget-s", type=float, default=200.0, help="at most this long for the gpu tests")
    parser.add_argument("--child-cap-s", type=float, default=240.0, help="at most this long for one measuring process")
    parser.add_argument("--overlap-builds", choices=("auto", "on", "off"), default="auto",
                        help="build/export on half the cores while the other half measures (auto: with ≥ 8 cores)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the gpu tests")
    parser.add_argument("--published", default="", help="SHAPE=PAIRS_PER_S,... added to (or replacing) the "
                        f"published figures {PUBLISHED_PAIRS_PER_S} the × published column divides by")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = "tiny" if args.dry_run else ",".join(DEFAULT_SIZES)
    try:
        args.published = {k.strip(): float(v) for k, v in (item.split("=") for item in args.published.split(",")
                                                             if item.strip())}
    except ValueError:
        parser.error(f"--published takes SHAPE=PAIRS_PER_S[,SHAPE=PAIRS_PER_S...], got {args.published!r}")
    if args.passes is None:
        args.passes = 1 if args.dry_run else 3
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(Path(argv[1]))
    return Kit(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
