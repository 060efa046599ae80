"""The GPU device kit (benchmarks/gpu/) on the CPU: wheel_parts' split / stash / join, and ``kit.py --dry-run``.

What a device call needs cannot be tried here (no GPU, no onnxruntime-gpu), so the kit's whole course is
run on the CPU instead: the tiny model, the CPU execution provider, fp32, a store holding a model in parts
(the way the distilled 17m travels), a fixture built and exported on the "other half" of the cores. These
tests check that every step leaves a record (ran / skipped / failed), that each ratio is computed from
the numbers recorded beside it, and that a part that went missing or arrived damaged is named.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / "benchmarks" / "gpu"
KIT = GPU_DIR / "kit.py"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_kit_{name}", GPU_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wheel_parts = _load("wheel_parts")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def fake_wheel(tmp_path) -> Path:
    wheel = tmp_path / "src" / "onnxruntime_gpu-9.9.9-cp312-cp312-manylinux_2_28_x86_64.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(os.urandom(300_000) + b"tail")
    return wheel


def test_split_stash_join_round_trip(tmp_path, fake_wheel):
    manifest = wheel_parts.split(fake_wheel, tmp_path / "parts", part_mib=0.1)
    part_bytes = int(0.1 * (1 << 20))
    assert manifest["count"] == 3 == len(manifest["parts"])  # 300,004 bytes in parts of 104,857
    assert [p["size"] for p in manifest["parts"]] == [part_bytes, part_bytes, 300_004 - 2 * part_bytes]
    assert manifest["sha256"] == _sha(fake_wheel) and manifest["size"] == 300_004 and manifest["kind"] == "file"
    on_disk = json.loads((tmp_path / "parts" / f"{fake_wheel.name}.parts.json").read_text())
    assert on_disk == manifest
    for p in manifest["parts"]:
        assert _sha(tmp_path / "parts" / p["file"]) == p["sha256"]

    store = tmp_path / "store"
    # one call per part, as on the device: a part with the manifest beside it, then one found in the store
    parts = sorted((tmp_path / "parts").glob("*.part[0-9]*"))
    assert wheel_parts.stash([parts[0]], store) == [parts[0].name]
    carried = tmp_path / "carried"  # a later call's checkout: the part alone, the manifest already stored
    carried.mkdir()
    shutil.copy(parts[1], carried)
    assert wheel_parts.stash([carried / parts[1].name], store) == [parts[1].name]
    assert wheel_parts.check(store, fake_wheel.name)["missing"] == [parts[2].name]
    wheel_parts.stash(parts, store)  # the whole folder again: stored parts are kept, the last one added
    out = tmp_path / "joined" / fake_wheel.name
    assert wheel_parts.join(store, out) == out
    assert out.read_bytes() == fake_wheel.read_bytes()


def test_join_names_missing_and_corrupt_parts(tmp_path, fake_wheel):
    wheel_parts.split(fake_wheel, tmp_path / "parts", part_mib=0.1)
    store = tmp_path / "store"
    wheel_parts.stash(sorted((tmp_path / "parts").glob("*")), store)
    name = fake_wheel.name
    (store / f"{name}.part01").unlink()
    damaged = bytearray((store / f"{name}.part02").read_bytes())
    damaged[10] ^= 0xFF
    (store / f"{name}.part02").write_bytes(bytes(damaged))
    state = wheel_parts.check(store, name)
    assert state["missing"] == [f"{name}.part01"] and state["corrupt"] == [f"{name}.part02"]
    assert not state["complete"] and state["present"] == [f"{name}.part00"]
    with pytest.raises(wheel_parts.PartsError, match=r"missing \S+part01; corrupt \S+part02 \(1 of 3 parts good\)"):
        wheel_parts.join(store, tmp_path / "out.whl")
    assert not (tmp_path / "out.whl").exists()
    # the CLI says the same and fails
    done = subprocess.run([sys.executable, str(GPU_DIR / "wheel_parts.py"), "join", "--store", str(store), "--out",
                           str(tmp_path / "out.whl")], capture_output=True, text=True)
    assert done.returncode == 1 and "part01" in done.stderr and "part02" in done.stderr


def test_stash_refuses_a_corrupt_carried_part_and_keeps_the_good_ones(tmp_path, fake_wheel):
    wheel_parts.split(fake_wheel, tmp_path / "parts", part_mib=0.1)
    name = fake_wheel.name
    bad = tmp_path / "parts" / f"{name}.part01"
    bad.write_bytes(bad.read_bytes()[:-1] + b"x")
    store = tmp_path / "store"
    with pytest.raises(wheel_parts.PartsError, match=r"part01 is corrupt"):
        wheel_parts.stash(sorted((tmp_path / "parts").glob("*")), store)
    assert sorted(p.name for p in store.glob("*.part[0-9]*")) == [f"{name}.part00", f"{name}.part02"]
    with pytest.raises(wheel_parts.PartsError, match="no .*parts.json"):  # a part carried without its manifest
        lone = tmp_path / "lone" / "other.bin.part00"
        lone.parent.mkdir()
        lone.write_bytes(b"x")
        wheel_parts.stash([lone], tmp_path / "store2")


def test_a_folder_travels_as_a_tar_and_is_extracted(tmp_path):
    model = tmp_path / "ettin-17m-distilled"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(os.urandom(200_000))
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    first = wheel_parts.split(model, tmp_path / "parts", part_mib=0.05)
    again = wheel_parts.split(model, tmp_path / "parts2", part_mib=0.05)
    assert first["kind"] == "dir" and first["sha256"] == again["sha256"]  # reproducible tar
    wheel_parts.stash(sorted((tmp_path / "parts").glob("*")), tmp_path / "store")
    out = wheel_parts.join(tmp_path / "store", tmp_path / "joined" / "model", name="ettin-17m-distilled")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["1_Pooling/config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


def test_synthetic_workload_is_fixed_and_realistic():
    kit = _load("kit")
    queries, docs = kit.synthetic_texts(40, 100, seed=0)
    assert (queries, docs) == kit.synthetic_texts(40, 100, seed=0)
    q_words = sorted(len(q.split()) for q in queries)
    d_words = sorted(len(d.split()) for d in docs)
    assert q_words[0] >= 6 and q_words[-1] <= 53 and 15 <= q_words[20] <= 40
    assert d_words[0] >= 34 and d_words[-1] <= 400 and 60 <= d_words[50] <= 150


def stand_in_wheel(directory: Path) -> Path:
    """A pure-Python wheel named like onnxruntime-gpu that shadows nothing: the install path without the real one."""
    wheel = directory / "onnxruntime_gpu-0.0.1-py3-none-any.whl"
    info = "onnxruntime_gpu-0.0.1.dist-info"
    files = {"gpu_kit_stand_in/__init__.py": "MARK = 1\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 0.0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def test_kit_dry_run_records_every_step(tmp_path, tiny_model):
    """``kit.py --dry-run`` end to end on the CPU; ≤ ~60 s on 2 cores."""
    # what travels to the device in parts: a wheel (a stand-in here) and the "distilled" model (the tiny one)
    wheel_parts.split(stand_in_wheel(tmp_path / "wheels"), tmp_path / "parts", part_mib=0.001)
    wheel_parts.split(tiny_model, tmp_path / "parts", part_mib=4, name="ettin-17m-distilled")
    store = tmp_path / "store"
    wheel_parts.stash(sorted((tmp_path / "parts").glob("*")), store)
    out = tmp_path / "out"
    command = [sys.executable, str(KIT), "--dry-run", "--out", str(out), "--work", str(tmp_path / "work"),
               "--deadline-s", "170", "--wheel-store", str(store), "--ort-target", str(tmp_path / "ortgpu"),
               "--overlap-builds", "on", "--published", "tiny=1000"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    (jsonl,) = out.glob("gpu-*.jsonl")
    (md,) = out.glob("gpu-*.md")
    assert (out / "nvidia-smi.txt").is_file() and any(out.glob("gpu-*-pytest.txt"))
    if shutil.which("nvidia-smi") is None:
        assert "absent" in (out / "nvidia-smi.txt").read_text()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]

    steps = {}
    for r in (r for r in records if r["record"] == "step"):
        assert r["step"] not in steps, f"{r['step']} recorded twice"
        assert r["status"] in ("ran", "skipped", "failed")
        steps[r["step"]] = r
    expected = {"install.store": "ran", "install.wheel": "ran", "install.rerankrt": "ran",
                "install.providers": "ran", "gpu_tests": "ran", "workload": "ran",
                "build.17m-distilled": "ran", "bench.17m-distilled": "ran", "build.tiny": "ran", "bench.tiny": "ran"}
    assert {k: v["status"] for k, v in steps.items()} == expected, {k: (v["status"], v.get("error") or
                                                                        v.get("reason")) for k, v in steps.items()}
    assert steps["install.rerankrt"]["how"] == "PYTHONPATH shim"
    # the wheel went in with pip --target, and that folder comes first for every child
    assert (tmp_path / "ortgpu" / "gpu_kit_stand_in" / "__init__.py").is_file()
    providers = steps["install.providers"]
    assert providers["pythonpath"][0] == str(tmp_path / "ortgpu")
    assert providers["versions"]["onnxruntime-gpu"] == "0.0.1"
    assert "CPUExecutionProvider" in providers["providers"]
    assert sorted(w["name"] for w in steps["install.store"]["wholes"]) == ["ettin-17m-distilled",
                                                                           "onnxruntime_gpu-0.0.1-py3-none-any.whl"]
    assert steps["build.tiny"]["gpu_hidden"] is True  # built beside the measurements, GPU hidden
    if "CUDAExecutionProvider" not in steps["install.providers"]["providers"]:
        assert steps["gpu_tests"]["counts"].get("skipped", 0) > 0 and not steps["gpu_tests"]["counts"].get("failed")
    assert steps["workload"]["source"].startswith(("negconstraint", "synthetic"))
    assert all(v["seconds"] is not None for v in steps.values() if v["status"] == "ran")

    rows = [r for r in records if r["record"] == "measurement"]
    for model in ("17m-distilled", "tiny"):
        mine = {(r["system"], r.get("config")): r for r in rows if r["model"] == model}
        assert set(mine) == {("torch-fp32-reference", None), ("st-bf16", None), ("rerankrt-fp32", "plain"),
                             ("rerankrt-fp32", "io_binding"), ("rerankrt-fp32", "io_binding+cuda_graph")}
        st = mine[("st-bf16", None)]
        assert st["status"] == "ran" and st["pairs_per_s"] > 0 and st["pairs"] == 20
        attention = st["attention"]
        assert attention["attempts"][0]["requested"] == "flash_attention_2" and attention["loaded"]
        assert attention["loaded"] in {a["requested"] for a in attention["attempts"] if a["loaded"]}
        assert st["dtypes"] == ["torch.bfloat16"]
        assert mine[("torch-fp32-reference", None)]["status"] == "ran"
        graph = mine[("rerankrt-fp32", "io_binding+cuda_graph")]
        assert graph["status"] == "skipped" and "CUDA" in graph["reason"]
        published = st["published_pairs_per_s"]
        assert published == 1000.0  # the tiny shape, via --published
        assert st["ratio_to_published"] == pytest.approx(st["pairs_per_s"] / published)
        for config in ("plain", "io_binding"):
            r = mine[("rerankrt-fp32", config)]
            assert r["status"] == "ran", r.get("error")
            assert r["backend_options"] == {"io_binding": config == "io_binding"}
            assert r["st_pairs_per_s"] == st["pairs_per_s"]
            assert r["ratio_to_st"] == pytest.approx(r["pairs_per_s"] / st["pairs_per_s"])
            assert r["ratio_to_published"] == pytest.approx(r["pairs_per_s"] / published)
            times = sorted(r["pass_times_s"])
            assert r["pairs_per_s"] == pytest.approx(r["pairs"] / times[len(times) // 2])  # median of odd passes
            f = r["fidelity_vs_fp32_reference"]
            assert f["max_abs_delta"] < 1e-4 and f["spearman"] > 0.999 and f["finite"]  # fp32 vs torch fp32
            assert r["load_s"] > 0 and r["gpu_memory"]["method"]
            assert r["described"]["precision"] == "fp32"

    summary = next(r for r in records if r["record"] == "summary")
    assert summary["steps"] == {k: v["status"] for k, v in steps.items()}
    for model, best in summary["best_rerankrt"].items():
        row = next(r for r in rows if r["model"] == model and r.get("config") == best["config"])
        assert best["ratio_to_st"] == row["ratio_to_st"]
    text = md.read_text()
    assert "(CPU dry run)" in text and "## Steps" in text and "## Throughput and fidelity" in text
    assert all(f"| {name} |" in text for name in expected)
    print(f"\nkit --dry-run took {seconds:.1f} s")


def test_kit_records_what_the_deadline_leaves_out(tmp_path):
    """A deadline too short for the build: it is skipped with the prediction that ruled it out, its bench too,
    and the report is still written with every planned step."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(KIT), "--dry-run", "--out", str(out), "--work", str(tmp_path / "work"),
                           "--deadline-s", "30", "--no-distilled", "--skip-tests", "--sizes", "tiny",
                           "--data", str(tmp_path / "no-data")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in next(out.glob("gpu-*.jsonl")).read_text().splitlines()]
    steps = {r["step"]: r for r in records if r["record"] == "step"}
    assert set(steps) == {"install.store", "install.wheel", "install.rerankrt", "install.providers", "gpu_tests",
                          "workload", "build.tiny", "bench.tiny"}
    assert steps["install.store"]["status"] == "skipped" and steps["gpu_tests"]["reason"] == "--skip-tests"
    build = steps["build.tiny"]
    assert build["status"] == "skipped" and build["predicted_s"] > 0 and "deadline" in build["reason"]
    assert steps["bench.tiny"]["status"] == "skipped" and "did not produce" in steps["bench.tiny"]["reason"]
    assert not [r for r in records if r["record"] == "measurement"]
    assert steps["workload"]["source"].startswith("synthetic, seed 0")  # no negconstraint where --data points
    assert records[-1]["record"] == "summary" and records[-1]["elapsed_s"] < 30
    assert "| build.tiny | skipped |" in next(out.glob("gpu-*.md")).read_text()
