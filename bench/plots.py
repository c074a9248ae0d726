"""PNG charts of the bench figures, drawn with matplotlib next to the printed tables.

Each bench calls one function here with the rows it measured; the charts go to ``docs/`` by default
(docs/benchmarks.md shows them from there), or to the folder a bench's ``--plot-dir`` names.
"""

import logging
import pathlib
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no screen: draw to files only
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger(__name__)

DOCS_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs"
MIB = 2**20
GROUP_COLORS = {"gpu": "#1f5f8b", "cpu": "#e39b2d", "none": "#9b3d3d"}


def _save(figure: Any, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    logger.info("chart written to %s", path)
    return path


def estimate_chart(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Per model, per precision: the estimate, the measured bytes, and the naive fp32/2/4/8 rule."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for axis, model in zip(axes[0], models):
        model_rows = [row for row in rows if row["model"] == model]
        positions = range(len(model_rows))
        width = 0.27
        for offset, key, label, color in (
            (-width, "measured_bytes", "measured", "#1f5f8b"),
            (0.0, "estimate_bytes", "our estimate", "#2e7d32"),
            (width, "naive_bytes", "fp32 / 2, 4, 8", "#bbbbbb"),
        ):
            axis.bar([p + offset for p in positions], [row[key] / MIB for row in model_rows], width, label=label, color=color)
        axis.set_xticks(list(positions), [row["precision"] for row in model_rows])
        axis.set_title(model)
        axis.set_ylabel("weights (MiB)")
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Weight bytes per precision: estimate from the config against a real load")
    return _save(figure, path)


def load_chart(rows: Sequence[dict[str, Any]], model: str, path: pathlib.Path) -> pathlib.Path:
    """Load time and peak memory per precision, as ratios to copying the bytes and to the model's bytes."""
    precisions = list(dict.fromkeys(row["precision"] for row in rows))
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    figure, (time_axis, peak_axis) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    width = 0.8 / len(modes)
    for index, mode in enumerate(modes):
        by_precision = {row["precision"]: row for row in rows if row["mode"] == mode}
        positions = [p + (index - (len(modes) - 1) / 2) * width for p in range(len(precisions))]
        # A mode that did not run at a precision (the weight cache is for quantized loads only) leaves a gap.
        time_axis.bar(positions, [by_precision[p]["time_ratio"] if p in by_precision else 0 for p in precisions], width, label=mode)
        peak_axis.bar(positions, [by_precision[p]["peak_ratio"] if p in by_precision else 0 for p in precisions], width, label=mode)
    time_axis.set_xticks(range(len(precisions)), precisions)
    peak_axis.set_xticks(range(len(precisions)), precisions)
    time_axis.set_ylabel("load time / time to copy the bytes")
    peak_axis.set_ylabel("peak memory / model bytes")
    time_axis.legend(fontsize=8)
    figure.suptitle(f"Loading {model}: time and peak per precision")
    return _save(figure, path)


def fallback_timeline_chart(
    records: Sequence[tuple[float, str, int]], events: dict[str, float], path: pathlib.Path, *, bin_s: float = 1.0
) -> pathlib.Path:
    """Requests answered per second by group (``records``: time answered s, group, status), with the events marked."""
    end = max(at for at, _, _ in records) if records else 0.0
    bins = int(end // bin_s) + 1
    figure, axis = plt.subplots(figsize=(9.5, 3.6))
    for group in ("gpu", "cpu", "none"):
        counts = [0] * bins
        for at, served_by, status in records:
            if (served_by if status == 200 else "none") == group:
                counts[int(at // bin_s)] += 1
        if any(counts):
            label = "failed" if group == "none" else f"{group} group"
            axis.step([i * bin_s for i in range(bins)], [c / bin_s for c in counts], where="post", label=label,
                      color=GROUP_COLORS[group])
    for name, at in events.items():
        axis.axvline(at, color="#555555", linestyle="--", linewidth=1)
        axis.annotate(name, (at, axis.get_ylim()[1] * 0.92), rotation=90, fontsize=8, ha="right", va="top")
    axis.set_xlabel("seconds")
    axis.set_ylabel("requests answered per second")
    axis.legend(fontsize=8, loc="upper left")
    axis.set_title("GPU group failure and recovery: who answers")
    return _save(figure, path)


def sampling_chart(rows: Sequence[dict[str, Any]], lengths_s: dict[str, int], path: pathlib.Path) -> pathlib.Path:
    """Seconds to sample the frames against the video's length, for the sampler and the baselines."""
    figure, axis = plt.subplots(figsize=(7, 4))
    lengths = [lengths_s[row["video"]] for row in rows]
    for key, label, color in (
        ("sampler_s", "our sampler", "#1f5f8b"),
        ("seek-each_s", "seek to each frame", "#e39b2d"),
        ("decode-all_s", "decode everything", "#9b3d3d"),
        ("transformers_s", "transformers load_video", "#999999"),
    ):
        axis.plot(lengths, [row[key] for row in rows], marker="o", label=label, color=color)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("video length (s), 720p H.264")
    axis.set_ylabel(f"seconds to sample {rows[0]['frames']} frames")
    axis.legend(fontsize=8)
    axis.set_title("Frame sampling cost against video length")
    return _save(figure, path)


def throughput_chart(
    levels: Sequence[int], in_process: dict[int, float], server: dict[int, dict[str, float]], model: str, path: pathlib.Path
) -> pathlib.Path:
    """Tokens per second against concurrency: our server, and plain batched ``generate`` in one process."""
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(levels, [in_process[level] for level in levels], marker="o", label="in-process generate (batch = level)",
              color="#999999")
    axis.plot(levels, [server[level]["tokens_per_s"] for level in levels], marker="o", label="server (clients = level)",
              color="#1f5f8b")
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(levels), [str(level) for level in levels])
    axis.set_xlabel("concurrency")
    axis.set_ylabel("tokens per second")
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=8)
    axis.set_title(f"Throughput against concurrency ({model})")
    return _save(figure, path)


def engines_chart(levels: Sequence[int], servers: dict[str, dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Requests per second against clients, new and repeated images: bare vLLM (its defaults, eager), ours on vLLM
    (tuned, default limits), ours on transformers; the servers the run measured."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    styles = {"bare_vllm": ("bare vLLM, its defaults", "#555555", "-"), "bare_vllm_eager": ("bare vLLM, eager", "#aaaaaa", "--"),
              "ours_vllm": ("ours, engine: vllm", "#1f5f8b", "-"),
              "ours_vllm_defaults": ("ours, engine: vllm, default limits", "#6fa8d6", "--"),
              "ours_transformers": ("ours, engine: transformers", "#c9822b", "-")}
    for axis, kind in zip(axes, ("new_image", "repeated_image"), strict=True):
        for name, (label, color, line) in styles.items():
            if name in servers and servers[name].get(kind):
                axis.plot(levels, [servers[name][kind][level]["req_per_s"] for level in levels], marker="o", label=label,
                          color=color, linestyle=line)
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(levels), [str(level) for level in levels])
        axis.set_xlabel("clients")
        axis.set_title(kind.replace("_", " "))
        axis.set_ylim(bottom=0)
    axes[0].set_ylabel("requests per second")
    axes[0].legend(fontsize=8)
    figure.suptitle("Images and a question, 32 tokens: the same model and threads on each server")
    return _save(figure, path)


def jobs_chart(report: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
    """bench/jobs.py: the job against its requests sent by a client, chat latency idle and beside a job, and
    each process's peak private memory (RSS less shared pages) for a 10-minute and a 3-hour video."""
    panels = [name for name in ("overhead", "interactive", "memory") if name in report]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    axes = [axes] if len(panels) == 1 else list(axes)
    for axis, name in zip(axes, panels, strict=True):
        figures = report[name]
        if name == "overhead":
            labels = ["client sends\nthe 60 requests", "job: the\n60 segments", "job with its\nfinal answer"]
            values = [figures["baseline_s"], figures["job_segments_s"], figures["job_total_s"]]
            axis.bar(labels, values, color=["#999999", "#1f5f8b", "#5f8fb5"])
            axis.set_ylabel("seconds")
            axis.set_title(f"1 hour of 720p: the job at {figures['ratio_segments']:.2f}x")
        elif name == "interactive":
            for offset, (key, label, color) in enumerate((("idle", "idle", "#999999"), ("during_job", "during a job", "#1f5f8b"))):
                axis.bar([index + offset * 0.4 for index in range(2)], [figures[key]["p50_s"] * 1000, figures[key]["p95_s"] * 1000],
                         width=0.4, label=label, color=color)
            axis.set_xticks([0.2, 1.2], ["p50", "p95"])
            axis.set_ylabel("chat latency, ms")
            axis.set_title(f"Chat beside a job: p50 {figures['ratio_p50']:.2f}x")
            axis.legend(fontsize=8)
        else:
            kinds = list(figures["ratio_3h_over_10min"]["private"])
            for offset, (video, color) in enumerate((("10 minutes", "#999999"), ("3 hours", "#1f5f8b"))):
                peaks = figures["peak_bytes"][video]["private"]
                axis.bar([index + offset * 0.4 for index in range(len(kinds))], [peaks[kind] / MIB for kind in kinds],
                         width=0.4, label=video, color=color)
            axis.set_xticks([index + 0.2 for index in range(len(kinds))], [kind.replace(" ", "\n") for kind in kinds])
            axis.set_ylabel("peak private memory, MiB")
            axis.set_title("Peak memory per process, by video length")
            axis.legend(fontsize=8)
    return _save(figure, path)


def overhead_chart(bars: Sequence[tuple[str, dict[str, float]]], title: str, path: pathlib.Path) -> pathlib.Path:
    """bench/overhead.py: one stacked bar per server, the layer's CPU milliseconds a request by process."""
    roles = list(dict.fromkeys(role for _, by_role in bars for role in by_role))
    figure, axis = plt.subplots(figsize=(9, 2.2 + 0.6 * len(bars)))
    colors = plt.get_cmap("tab10")
    for index, (label, by_role) in enumerate(bars):
        left = 0.0
        for color_index, role in enumerate(roles):
            width = by_role.get(role, 0.0)
            axis.barh(index, width, left=left, color=colors(color_index % 10), label=role if index == 0 else None)
            left += width
        axis.text(left + 1, index, f"{left:.0f} ms", va="center", fontsize=8)
    axis.set_yticks(range(len(bars)), [label for label, _ in bars])
    axis.invert_yaxis()
    axis.set_xlabel("CPU ms a request outside vLLM's worker (the model)")
    axis.set_title(title, fontsize=10)
    axis.set_xlim(right=axis.get_xlim()[1] * 1.08)  # room for the totals
    axis.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    return _save(figure, path)


def ask_many_chart(nth: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
    """bench/ask_many.py: each of five questions about one video, in seconds, per engine (and without the media cache)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = {"transformers": ("ours, transformers", "#c9822b", "-"),
              "transformers_no_media_cache": ("ours, transformers, media_cache_bytes: 0", "#e8b878", "--"),
              "vllm": ("ours, engine: vllm", "#1f5f8b", "-")}
    for name, (label, color, line) in labels.items():
        if name in nth:
            axis.plot(range(1, len(nth[name]["seconds"]) + 1), nth[name]["seconds"], marker="o", label=label, color=color,
                      linestyle=line)
    axis.set_xlabel("question about the same 10-minute video")
    axis.set_ylabel("seconds")
    axis.set_xticks(range(1, 6))
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=8)
    figure.suptitle("Five questions, 8 frames at 448x448: from the second on")
    return _save(figure, path)
