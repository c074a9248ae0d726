"""``python -m memory``: what memory there is, and whether a model would fit, without loading it.

    python -m memory summary [--json]
    python -m memory plan MODEL_DIR [--device cuda|cpu] [--gpu-share 0.5] [--chain bf16,int8,nf4]
                         [--memory-bytes N] [--gpu-total-bytes N --gpu-free-bytes N]
                         [--frames 8] [--images 1] [--pixels-per-frame 200704] [--prompt-tokens 8192]
                         [--max-new-tokens 512] [--json]

``plan`` prints the model's weight bytes at every precision (the same on any
machine), then prices each strategy of the chain from the model's ``config.json``
(meta device, no weights read) against the budget this replica would get, and
says which fit. The activation reserve is the request of ``--frames`` video frames, ``--images``
images and ``--prompt-tokens`` prompt tokens, priced as admission prices it. Without ``--device`` it plans for the GPU when one is visible
(or given), else for the CPU, and says so; ``--gpu-total-bytes`` (with
``--gpu-share`` and ``--gpu-free-bytes``) plans for a GPU this machine does not
have. Exit status: 0 when some strategy fits, 1 when none does, 2 for bad input.
"""

import argparse
import json
import logging
import sys
from typing import Any

from memory.allocator import read_allocator_settings
from memory.budget import DEFAULT_CUDA_CONTEXT_BYTES, BudgetError, MemoryBudget, cpu_budget, gpu_budget
from memory.chain_estimate import estimate_chain
from memory.estimate import ModelConfigError, activation_reserve_bytes, load_model_config
from memory.largest_request import largest_request
from memory.packing import DEFAULT_SHARE_GRID, PackingError, SharePlan, plan_share
from memory.probe import FixedGpu, MemorySnapshot, format_gib
from memory.strategy import DEFAULT_CPU_CHAIN, DEFAULT_GPU_CHAIN, StrategyError, parse_chain

logger = logging.getLogger("memory")


def _summary(args: argparse.Namespace) -> int:
    snapshot = MemorySnapshot.measure()
    allocator = read_allocator_settings()
    if args.json:
        sys.stdout.write(json.dumps({"memory": snapshot.to_dict(), "allocator": allocator.to_dict()}, indent=2) + "\n")
        return 0
    lines = [
        f"process RSS        {format_gib(snapshot.process_rss_bytes)}",
        f"system             {format_gib(snapshot.system_available_bytes)} available of {format_gib(snapshot.system_total_bytes)}",
        f"cgroup limit       {format_gib(snapshot.cgroup_limit_bytes)}",
        f"GPU probe          {snapshot.gpu_backend}",
    ]
    if not snapshot.gpus:
        lines.append("GPUs               none visible to this process")
    for gpu in snapshot.gpus:
        lines.append(f"GPU {gpu.index} {gpu.name}: {format_gib(gpu.free_bytes)} free of {format_gib(gpu.total_bytes)}")
        for process in gpu.other_processes:
            lines.append(f"    pid {process.pid} ({process.name or 'unknown'}) holds {format_gib(process.used_bytes)}")
        if gpu.torch is not None:
            lines.append(
                f"    this process: {format_gib(gpu.torch.allocated_bytes)} allocated, "
                f"{format_gib(gpu.torch.reserved_bytes)} reserved, fragmentation {gpu.torch.fragmentation_ratio:.1%}, "
                f"{gpu.torch.num_alloc_retries} allocation retries, {gpu.torch.num_ooms} OOMs"
            )
    lines.append(f"allocator          requested {allocator.requested or '{}'}, effective {allocator.effective or '{}'}")
    lines.extend(f"                   {note}" for note in allocator.notes)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _plan(args: argparse.Namespace) -> int:
    config = load_model_config(args.model, trust_remote_code=args.trust_remote_code)
    device, note = _device(args)
    args.device = device
    sizes = {strategy.name: estimate.total_bytes
             for strategy, estimate in estimate_chain(config, parse_chain(PRECISIONS, "cpu")).items()}
    chain = parse_chain(args.chain.split(",") if args.chain else list(_default_chain(args.device)), args.device)
    vision = getattr(config, "vision_config", None)
    request = largest_request(
        max_prompt_tokens=args.prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        max_media_parts=args.images + (1 if args.frames else 0),
        max_request_frames=args.frames,
        max_request_pixels=(args.frames + args.images) * args.pixels_per_frame,
        pixels_per_frame=args.pixels_per_frame,
        patch_size=getattr(vision, "patch_size", 14),
        merge_size=getattr(vision, "spatial_merge_size", 2),
        temporal_patch_size=getattr(vision, "temporal_patch_size", 2),
    )
    reserve = activation_reserve_bytes(config, request, chain[0])
    budget = _budget(args, reserve)
    rows: list[dict[str, Any]] = []
    for strategy, estimate in estimate_chain(config, chain).items():
        rows.append(
            {
                "strategy": strategy.name,
                "estimate_bytes": estimate.total_bytes,
                "budget_bytes": budget.weights_bytes,
                "fits": estimate.total_bytes <= budget.weights_bytes,
                "estimate": estimate.to_dict(),
            }
        )
    first_fit = next((row["strategy"] for row in rows if row["fits"]), None)
    packing, packing_note = _packing(args, rows, reserve) if device == "cuda" else (None, None)
    if args.json:
        payload = {
            "model": str(args.model),
            "model_type": config.model_type,
            "sizes_bytes": sizes,
            "device": device,
            "note": note,
            "budget": budget.to_dict(),
            "strategies": rows,
            "would_load": first_fit,
            "packing": packing.to_dict() if packing else None,
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        lines = [
            f"{args.model} ({config.model_type})",
            "weights: " + ", ".join(f"{name} {format_gib(size)}" for name, size in sizes.items()),
        ]
        if note:
            lines.append(note)
        lines.append(budget.explain())
        for row in rows:
            verdict = "fits" if row["fits"] else f"does not fit (short by {format_gib(row['estimate_bytes'] - row['budget_bytes'])})"
            lines.append(f"  {row['strategy']:<5} {format_gib(row['estimate_bytes']):>12}  {verdict}")
        lines.append(f"would load as: {first_fit or 'nothing fits'}")
        if packing is not None:
            lines.append(packing.explain())
        elif packing_note:
            lines.append(packing_note)
        sys.stdout.write("\n".join(lines) + "\n")
    return 0 if first_fit else 1


PRECISIONS = ("fp32", "bf16", "int8", "nf4")


def _packing(args: argparse.Namespace, rows: list[dict[str, Any]], reserve_bytes: int) -> tuple[SharePlan | None, str | None]:
    """What ``gpu_group.num_gpus: auto`` would pick on this GPU: each precision's share and replicas a GPU."""
    total = args.gpu_total_bytes
    if total is None:
        gpus = MemorySnapshot.measure().gpus
        total = gpus[0].total_bytes if gpus else None
    if total is None:
        return None, None
    try:
        plan = plan_share(
            {row["strategy"]: row["estimate_bytes"] for row in rows}, total_bytes=total, reserve_bytes=reserve_bytes,
            context_bytes=DEFAULT_CUDA_CONTEXT_BYTES, grid=args.share_grid,
        )
    except PackingError as error:
        return None, f"num_gpus auto: {error}"
    return plan, None


def _device(args: argparse.Namespace) -> tuple[str, str | None]:
    """The device to plan for, and a note when it was chosen for the caller."""
    if args.device is not None:
        return args.device, None
    if args.gpu_total_bytes is not None or MemorySnapshot.measure().gpus:
        return "cuda", None
    return "cpu", (
        "No GPU visible: planned for this machine's CPU. To plan for a GPU that is not here, give "
        "--gpu-total-bytes (and --gpu-share, --gpu-free-bytes)."
    )


def _default_chain(device: str) -> tuple[str, ...]:
    return DEFAULT_GPU_CHAIN if device == "cuda" else DEFAULT_CPU_CHAIN


def _budget(args: argparse.Namespace, reserve_bytes: int) -> MemoryBudget:
    if args.device == "cpu":
        return cpu_budget(MemorySnapshot.measure(), configured_bytes=args.memory_bytes, reserve_bytes=reserve_bytes)
    backend = None
    if args.gpu_total_bytes is not None:
        free = args.gpu_free_bytes if args.gpu_free_bytes is not None else args.gpu_total_bytes
        backend = FixedGpu(total_bytes=args.gpu_total_bytes, free_bytes=free)
    snapshot = MemorySnapshot.measure(backend)
    if not snapshot.gpus:
        raise BudgetError(
            "No GPU visible to plan against: run on a GPU machine, or give --gpu-total-bytes (and --gpu-free-bytes)"
        )
    return gpu_budget(snapshot.gpus[0], share=args.gpu_share, context_bytes=DEFAULT_CUDA_CONTEXT_BYTES, reserve_bytes=reserve_bytes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="this process, the system and the GPUs, measured now")
    summary.add_argument("--json", action="store_true")
    plan = commands.add_parser("plan", help="each loading strategy's estimate against the budget, without loading")
    plan.add_argument("model", help="a local checkpoint folder (config.json is enough)")
    plan.add_argument("--device", choices=("cuda", "cpu"), default=None,
                      help="plan for this device (default: the GPU when one is visible or given, else the CPU)")
    plan.add_argument("--gpu-share", type=float, default=0.5, help="the replica's num_gpus (default 0.5)")
    plan.add_argument("--chain", help="comma-separated strategies, e.g. bf16,int8,nf4")
    plan.add_argument("--memory-bytes", type=int, default=8 * 1024**3, help="CPU budget in bytes")
    plan.add_argument("--gpu-total-bytes", type=int, help="plan for a GPU of this size instead of the one present")
    plan.add_argument("--gpu-free-bytes", type=int, help="free bytes on that GPU (default: all of it)")
    plan.add_argument("--frames", type=int, default=8, help="video frames of the request the reserve is priced for")
    plan.add_argument("--images", type=int, default=1, help="images of that request")
    plan.add_argument("--prompt-tokens", type=int, default=8192, help="its prompt tokens, text and visual")
    plan.add_argument("--pixels-per-frame", type=int, default=448 * 448)
    plan.add_argument("--max-new-tokens", type=int, default=512)
    plan.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="read a config whose class ships with the checkpoint (MiniCPM-V 2.6); runs that code",
    )
    plan.add_argument("--share-grid", type=float, default=DEFAULT_SHARE_GRID,
                      help="num_gpus auto's grid: shares are multiples of this (default 0.05)")
    plan.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return _summary(args) if args.command == "summary" else _plan(args)
    except (ModelConfigError, BudgetError, StrategyError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
