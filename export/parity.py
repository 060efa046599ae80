"""The parity gate: every exported precision against the PyTorch reference, on the same ids.

Metrics per precision: max |Δ| (absolute, and relative to the reference's score range),
mean |Δ|, Spearman correlation over all pairs, and mean top-10 agreement per query group.
Default tolerances were set on the distilled 17m fixture (scores spread like a trained
reranker's), not on random weights, which squeeze scores and exaggerate every error.

:func:`check_precision` scores a graph on every installed backend that may run it, the way
the runtime does: backends from the engine's one factory (``create_backend``), scores from its
scoring core (``score_ids``). It must not plan, pad or run batches itself.

fp16 is what a GPU load runs (``selection.GPU_PRECISION_ORDER``), so where onnxruntime reports the
``CUDAExecutionProvider`` the fp16 graph is also checked on ``device="cuda"``, with the runtime's GPU
providers and batches. Every report says which device and execution providers it ran on
(``device``, ``providers``; the precision's ``devices``), and fp16 checked on the CPU only says why
(``skipped_devices``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rerankrt.engine.agreement import Tolerance, average_ranks, compare, spearman, top_k_agreement
from rerankrt.engine.backends import create_backend
from rerankrt.engine.batching import BatchPolicy
from rerankrt.engine.errors import BackendUnavailableError, ParityError
from rerankrt.engine.hardware import cpu_info
from rerankrt.engine.scoring import score_ids
from rerankrt.engine.selection import CPU_BACKENDS, OPENVINO_INT8_BF16, installed

from .calibration import LONG_POLICY, TOKEN_BUDGET, LongCheck

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "average_ranks", "check_long_lengths", "check_precision", "check_run",
           "compare", "device_checks", "enforce", "format_report", "planned_runs", "score_graph", "spearman",
           "top_k_agreement"]

_BY_BACKEND_FIELDS = ("max_abs_delta", "max_rel_delta", "spearman", "top10_agreement", "passed",
                      "inference_precision", "device", "providers")
GPU_CHECKED_PRECISIONS = ("fp16",)  # what a GPU load runs first (selection.GPU_PRECISION_ORDER)


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_rel_delta=1e-4, min_spearman=0.9999, min_top10=1.0),
    "fp16": Tolerance(max_rel_delta=1e-2, min_spearman=0.999, min_top10=0.95),
    "bf16": Tolerance(max_rel_delta=2e-2, min_spearman=0.995, min_top10=0.95),
    "int8": Tolerance(max_rel_delta=5e-2, min_spearman=0.995, min_top10=0.95),
}


def score_graph(graph_path: Path, precision: str, backend: str, token_ids: list[list[int]], pad_id: int,
                num_labels: int = 1, threads: int | None = None, options: dict | None = None,
                policy: BatchPolicy | None = None, device: str = "cpu") -> tuple[np.ndarray, str | None]:
    """Logits ``[n, num_labels]`` in input order from one backend, and what it ran between quantized ops."""
    logits, described = _score(graph_path, precision, backend, token_ids, pad_id, num_labels, threads, options,
                               policy, device)
    return logits, described.get("inference_precision")


def _score(graph_path: Path, precision: str, backend: str, token_ids: list[list[int]], pad_id: int,
           num_labels: int, threads: int | None, options: dict | None, policy: BatchPolicy | None,
           device: str) -> tuple[np.ndarray, dict]:
    """``score_graph``'s logits and the backend's ``describe()`` (its device and execution providers)."""
    if backend == "openvino" or device != "cpu":
        # a staging file: its compiled blob (4 GB for the 1b) or TensorRT engine would never be read again
        options = {"cache_dir": False, **(options or {})}
    created = create_backend(graph_path, precision=precision, backend=backend, device=device, threads=threads,
                             options=options)
    if policy is None and device == "cpu":
        # The calibration's token budget (several mixed-length batches), each padded to its own longest
        # row: the widths the gate has always scored, for every backend. The runtime's width multiple
        # (OpenVINO int8 rounds widths up to 16) changes OpenVINO's int8 logits in the last bits (up to
        # 6e-3 with bf16 between the matmuls, tiny fixture), so adopting it would move the gate's numbers.
        policy = dataclasses.replace(created.policy, token_budget=TOKEN_BUDGET, pad_to_multiple_of=1,
                                     width_buckets=())
    # On a GPU the runtime's own policy: its width buckets are the shapes TensorRT's profiles hold.
    logits = score_ids(created.backend, token_ids, policy or created.policy, pad_id, num_labels)
    return logits, created.backend.describe()


def device_checks(precision: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The devices ``precision`` is checked on here, and the devices it is not checked on with the reason.

    Always the CPU; fp16 also on ``cuda`` where a ``CUDAExecutionProvider`` session really starts (a GPU
    build with its device hidden or absent still lists the provider).
    """
    if precision not in GPU_CHECKED_PRECISIONS:
        return ("cpu",), {}
    from rerankrt.engine.backends.ort_providers import cuda_unusable_reason

    reason = cuda_unusable_reason()
    if reason is None:
        return ("cpu", "cuda"), {}
    return ("cpu",), {"cuda": f"{reason}: checked on the CPU EP only"}


def planned_runs(precision: str, devices: tuple[str, ...] | None = None,
                 cpu_backends: tuple[str, ...] | None = None) -> list[tuple[str, str, dict, str]]:
    """``(label, backend, options, device)`` of every scoring run the gate makes for ``precision`` on this machine.

    ``devices`` (default: :func:`device_checks`) — the CPU runs every installed CPU backend that may run the
    precision (or those of ``cpu_backends``: a graph only one backend loads); a GPU device runs onnxruntime,
    labelled ``onnxruntime@<device>``.
    """
    devices = device_checks(precision)[0] if devices is None else devices
    runs: list[tuple[str, str, dict, str]] = []
    if "cpu" in devices:
        backends = [b for b in CPU_BACKENDS[precision] if installed(b) and (cpu_backends is None or b in cpu_backends)]
        if not backends:
            raise ValueError(f"cannot verify {precision}: it needs {' or '.join(CPU_BACKENDS[precision])} installed "
                             f"(pip install 'rerankrt[openvino]')")
        runs += [(name, name, {}, "cpu") for name in backends]
        if precision == "int8" and "openvino" in backends and cpu_info().has_bf16:
            # int8 with bf16 between its matmuls: faster on BF16 CPUs, used there only if it passes
            # here; failing it keeps int8 (f32 elsewhere), so it does not fail the export
            runs.append((OPENVINO_INT8_BF16, "openvino", {"inference_precision": "bf16"}, "cpu"))
    runs += [(f"onnxruntime@{device}", "onnxruntime", {}, device) for device in devices if device != "cpu"]
    return runs


def check_run(graph_path: Path, precision: str, backend: str, options: dict, device: str,
              token_ids: list[list[int]], pad_id: int, reference: np.ndarray, groups: list[int],
              tolerance: Tolerance, num_labels: int = 1, threads: int | None = None) -> dict:
    """One backend on one device against the reference: :func:`compare`'s report, with what ran it
    (``device``, ``providers``: onnxruntime's execution providers in effect; ``inference_precision``)."""
    logits, described = _score(graph_path, precision, backend, token_ids, pad_id, num_labels, threads, options,
                               None, device)
    report = compare(reference, logits[:, 0], groups, tolerance)
    report["inference_precision"] = described.get("inference_precision")
    report["device"] = device
    report["providers"] = described.get("providers")
    return report


def check_precision(precision: str, graph_path: Path, token_ids: list[list[int]], pad_id: int,
                    reference: np.ndarray, groups: list[int], tolerance: Tolerance, num_labels: int = 1,
                    threads: int | None = None, devices: tuple[str, ...] | None = None,
                    cpu_backends: tuple[str, ...] | None = None) -> dict:
    """Compare one precision on every installed backend that may run it, on every device it is checked on
    (``devices``, default :func:`device_checks`); all must pass.

    ``reference`` holds the PyTorch scores (first label) in input order. A GPU device whose session cannot
    start (onnxruntime-gpu installed without a usable GPU) is recorded in ``skipped_devices``, not failed:
    the gate checks numbers, and there are none to check.
    """
    checked, skipped = device_checks(precision)
    devices = checked if devices is None else devices
    skipped = {d: why for d, why in skipped.items() if d not in devices}
    runs = planned_runs(precision, devices, cpu_backends)
    optional = {OPENVINO_INT8_BF16} & {label for label, _, _, _ in runs}
    reports = {}
    for label, name, options, device in runs:
        try:
            reports[label] = check_run(graph_path, precision, name, options, device, token_ids, pad_id, reference,
                                       groups, tolerance, num_labels, threads)
        except BackendUnavailableError as exc:
            if device == "cpu":
                raise
            skipped[device] = f"could not run on {device}: {exc}"
    ran = [run for run in runs if run[0] in reports]
    if not ran:
        raise BackendUnavailableError(f"{precision} could not be checked on {', '.join(devices)}: {skipped}")
    primary = dict(reports[ran[0][0]])
    primary["backend"] = ran[0][1]
    primary["devices"] = sorted({device for _, _, _, device in ran})
    if skipped:
        primary["skipped_devices"] = skipped
    if len(reports) > 1:
        primary["by_backend"] = {name: {k: r[k] for k in _BY_BACKEND_FIELDS if k in r} for name, r in reports.items()}
        failed = [name for name, r in reports.items() if not r["passed"] and name not in optional]
        if failed:
            primary["passed"] = False
            primary["failures"] = [f"{name}: {'; '.join(reports[name]['failures'])}" for name in failed]
    return primary


def check_long_lengths(graph_path: Path, long: LongCheck, pad_id: int, reference: np.ndarray, score_range: float,
                       tolerance: Tolerance, num_labels: int = 1, threads: int | None = None,
                       cpu_backends: tuple[str, ...] | None = None) -> dict:
    """fp32 at long lengths (issue 17: the banded sliding layers), on every CPU backend that runs fp32.

    ``reference`` holds the PyTorch scores of ``long.token_ids``; the bound is the fp32 tolerance times the
    score range of the main calibration set (four long pairs have no meaningful range of their own).
    """
    report: dict = {"lengths": long.lengths, "skipped": long.skipped, "by_backend": {}, "passed": True}
    for label, name, options, device in planned_runs("fp32", ("cpu",), cpu_backends):
        logits, _ = score_graph(graph_path, "fp32", name, long.token_ids, pad_id, num_labels, threads, options,
                                policy=LONG_POLICY, device=device)
        delta = float(np.abs(logits[:, 0].astype(np.float64) - reference).max()) if len(reference) else 0.0
        rel = delta / score_range if score_range > 0 else delta
        ok = bool(np.isfinite(logits).all()) and rel <= tolerance.max_rel_delta
        report["by_backend"][label] = {"max_abs_delta": delta, "max_rel_delta": rel, "passed": ok}
        report["passed"] = report["passed"] and ok
    return report


def format_report(reports: dict[str, dict]) -> str:
    lines = [f"{'precision':<9} {'max|Δ|':>10} {'|Δ|/range':>10} {'spearman':>10} {'top10':>6}  result"]
    for precision, r in reports.items():
        verdict = "ok" if r["passed"] else "FAIL: " + "; ".join(r["failures"])
        lines.append(f"{precision:<9} {r['max_abs_delta']:>10.3g} {r['max_rel_delta']:>10.2e} "
                     f"{r['spearman']:>10.6f} {r['top10_agreement']:>6.3f}  {verdict}")
        for name, sub in r.get("by_backend", {}).items():  # every backend's own line when there are several
            lines.append(f"  {name:<15} {sub['max_rel_delta']:>10.2e} {sub['spearman']:>10.6f} "
                         f"{sub['top10_agreement']:>6.3f}  {'ok' if sub['passed'] else 'failed'}")
        lines += [f"  (not checked on {device}: {why})" for device, why in r.get("skipped_devices", {}).items()]
        long = r.get("long_lengths")
        if long:
            lengths = ", ".join(f"{n:,}" for n in long["lengths"])
            for name, sub in long["by_backend"].items():
                lines.append(f"  {name:<15} {sub['max_rel_delta']:>10.2e} at {lengths} tokens  "
                             f"{'ok' if sub['passed'] else 'failed'}")
            lines += [f"  (not checked: {why})" for why in long["skipped"]]
        for form, sub_report in r.get("forms", {}).items():  # the same precision in another graph form
            lines += ["  " + line for line in format_report({f"{precision} {form}": sub_report}).splitlines()[1:]]
            if sub_report.get("dropped"):
                lines.append(f"    ({form} form dropped: onnxruntime loads the main {precision} graph)")
    return "\n".join(lines)


def enforce(reports: dict[str, dict], allow_failure: bool = False) -> None:
    failed = [p for p, r in reports.items() if not r["passed"]]  # (a failed extra form is dropped, not failed)
    if failed and not allow_failure:
        raise ParityError(
            f"parity gate failed for {', '.join(failed)} (pass --allow-parity-failure to keep them anyway, "
            f"or --tolerance to set thresholds):\n{format_report(reports)}", reports)
