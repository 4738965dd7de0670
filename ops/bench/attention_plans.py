"""bf16 attention kernels for the DiT's self-attention, side by side: torch's SDPA backends and
every execution plan cuDNN offers for the same graph.

    python -m ops.bench.attention_plans --out bench-out/attention-plans.json     # H200, 720x400

torch's SDPA reaches cuDNN's fused attention through one plan: the first its heuristics rank
(on an H200 at the DiT's shapes, a 64×128 tile: docs/benchmarks.md, "Where a step's time
goes"). The cuDNN frontend (the optional `nvidia-cudnn-frontend`) lists the others for the
same graph; each is built and timed here on the self-attention of one block (3375 queries over
16 278 keys at 720×400, 40 heads of 128, q, k and v in the DiT's [B, L, H, D] layout), with:

  ms, TFLOP/s   CUDA-event time per call (median of --repeats calls), 4·Lq·Lk·H·D flops;
  error         relative error against float32 attention on the same inputs;
  equal         whether the output equals torch's cuDNN SDPA output bit for bit.

A plan is named by cuDNN (engine and knobs): choosing one by name is deterministic, unlike
timing candidates in each process.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ops.bench.report import save_report
from ops.bench.timing import time_call


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cudnn_graph(q: torch.Tensor, k: torch.Tensor, handle: Any) -> tuple[Any, dict[str, Any]]:
    import cudnn

    bf16, f32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(
        io_data_type=bf16, intermediate_data_type=f32, compute_data_type=f32, handle=handle
    )

    def bhsd(shape: torch.Size, name: str) -> Any:  # [B, L, H, D] memory seen as BHSD
        b, n, h, d = shape
        return graph.tensor(
            name=name, dim=(b, h, n, d), stride=(n * h * d, d, h * d, 1), data_type=bf16
        )

    tq, tk, tv = bhsd(q.shape, "q"), bhsd(k.shape, "k"), bhsd(k.shape, "v")
    common = dict(q=tq, k=tk, v=tv, attn_scale=1.0 / math.sqrt(q.shape[-1]))
    try:
        o, _ = graph.sdpa(name="sdpa", **common, generate_stats=False)
    except TypeError:
        o, _ = graph.sdpa(name="sdpa", **common, is_inference=True)
    b, n, h, d = q.shape
    o.set_output(True).set_dim((b, h, n, d)).set_stride((n * h * d, d, h * d, 1))
    o.set_data_type(bf16)
    graph.validate()
    graph.build_operation_graph()
    modes = [cudnn.heur_mode.A, cudnn.heur_mode.B, cudnn.heur_mode.FALLBACK]
    graph.create_execution_plans(modes)
    graph.check_support()
    return graph, {"q": tq, "k": tk, "v": tv, "o": o}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    heads, dim = args.heads, args.dim
    q = torch.randn(1, args.queries, heads, dim, device=device, generator=g, dtype=torch.bfloat16)
    k = torch.randn(1, args.keys, heads, dim, device=device, generator=g, dtype=torch.bfloat16)
    v = torch.randn(1, args.keys, heads, dim, device=device, generator=g, dtype=torch.bfloat16)
    flops = 4 * args.queries * args.keys * heads * dim
    ref = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(
        1, 2
    )

    def err(o: torch.Tensor) -> float:
        return float((o.float() - ref).norm() / ref.norm())

    rows: list[dict[str, Any]] = []
    torch_cudnn = None
    for name, backend in (
        ("torch SDPA, cuDNN", SDPBackend.CUDNN_ATTENTION),
        ("torch SDPA, flash", SDPBackend.FLASH_ATTENTION),
        ("torch SDPA, efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):

        def call(backend: SDPBackend = backend) -> torch.Tensor:
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                ).transpose(1, 2)

        try:
            out = call()
            ms = time_call(call, device, 3, args.repeats) * 1e3
        except RuntimeError as exc:
            rows.append({"kernel": name, "unavailable": str(exc)[:200]})
            continue
        if torch_cudnn is None:
            torch_cudnn = out
        rows.append(
            {
                "kernel": name,
                "ms": round(ms, 4),
                "tflops": round(flops / ms / 1e9, 1),
                "error": err(out),
                "equal_to_torch_cudnn": bool(torch.equal(out, torch_cudnn)),
            }
        )
        log(f"{name}: {ms:.3f} ms")

    try:
        import cudnn
    except (ImportError, OSError) as exc:
        rows.append({"kernel": "cuDNN frontend", "unavailable": str(exc)[:200]})
        return {"rows": rows, "flops": flops}
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    graph, t = cudnn_graph(q, k, handle)
    count = graph.get_execution_plan_count()
    log(f"cuDNN offers {count} plans")
    for i in range(count):
        name = graph.get_plan_name_at_index(i)
        row: dict[str, Any] = {"kernel": f"cuDNN plan {i}", "plan": name}
        try:
            graph.build_plan_at_index(i)
            ws = torch.empty(
                max(graph.get_workspace_size_plan_at_index(i), 1), dtype=torch.uint8, device=device
            )
            out = torch.empty_like(q)
            pack = {t["q"]: q, t["k"]: k, t["v"]: v, t["o"]: out}

            def call(i: int = i, pack: dict = pack, ws: torch.Tensor = ws) -> None:
                graph.execute_plan_at_index(pack, ws, i, handle=handle)

            call()
            torch.cuda.synchronize()
            ms = time_call(call, device, 3, args.repeats) * 1e3
            row.update(
                ms=round(ms, 4),
                tflops=round(flops / ms / 1e9, 1),
                error=err(out),
                equal_to_torch_cudnn=bool(
                    torch_cudnn is not None and torch.equal(out, torch_cudnn)
                ),
            )
            log(f"plan {i} {name}: {ms:.3f} ms")
        except Exception as exc:  # noqa: BLE001 - a plan this GPU cannot build: say so
            row["unavailable"] = f"{type(exc).__name__}: {exc}"[:200]
        rows.append(row)
    cudnn.destroy_handle(handle)
    return {"rows": rows, "flops": flops, "plans": count}


def table(report: dict[str, Any]) -> str:
    lines = [
        f"attention, {report['queries']} queries over {report['keys']} keys, "
        f"{report['heads']}×{report['dim']}, {report['device']}, torch {report['torch']}",
        "| kernel | plan | ms | TFLOP/s | error | equal to torch cuDNN |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        if "unavailable" in r:
            lines.append(f"| {r['kernel']} | {r.get('plan', '')[:70]} | unavailable: "
                         f"{r['unavailable'][:80]} | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['kernel']} | {r.get('plan', '')[:70]} | {r['ms']:.3f} | {r['tflops']:.0f} "
            f"| {r['error'] * 100:.3f} % | {r['equal_to_torch_cudnn']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--queries", type=int, default=3375)
    p.add_argument("--keys", type=int, default=16278)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.backends.cudnn.version()  # torch loads its libcudnn, which the frontend then finds
    t0 = time.perf_counter()
    report = {
        "benchmark": "attention plans",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "queries": args.queries,
        "keys": args.keys,
        "heads": args.heads,
        "dim": args.dim,
        **run(args),
    }
    save_report(args.out, report, t0)
    print(table(report))


if __name__ == "__main__":
    main()
