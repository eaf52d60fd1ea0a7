"""Figures for the benchmark results (matplotlib, written as PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def grid_heatmaps(grid: dict, title: str, path: Path) -> None:
    """Accuracy per (length, depth) for every method; grey where a method did not run."""
    names = list(grid["results"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    lengths, depths = grid["lengths"], grid["depths"]
    for ax, name in zip(axes[0], names):
        cells = [[_cell(grid["results"][name][str(n)][j]) for n in lengths] for j in range(len(depths))]
        ax.imshow(cells, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="upper")
        ax.set_facecolor("lightgrey")
        ax.set_xticks(range(len(lengths)), [_k(n) for n in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths], fontsize=8)
        acc = grid["summary"][name]["accuracy"]
        ax.set_title(f"{name}\n{'-' if acc is None else f'{100 * acc:.0f}%'}", fontsize=9)
        ax.set_xlabel("tokens", fontsize=8)
    axes[0][0].set_ylabel("needle depth")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def peer_bars(grids: list[dict], path: Path) -> None:
    """Accuracy and mean seconds per method, one group per task."""
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(g["summary"]) for g in grids)
    for i, grid in enumerate(grids):
        for j, (name, s) in enumerate(grid["summary"].items()):
            x = i + (j - (len(grid["summary"]) - 1) / 2) * width
            acc_ax.bar(x, 100 * (s["accuracy"] or 0), width, color=f"C{j}", label=name if i == 0 else None)
            time_ax.bar(x, s["mean_seconds"] or 0, width, color=f"C{j}")
    for ax, label in ((acc_ax, "accuracy (%)"), (time_ax, "mean seconds per question")):
        ax.set_xticks(range(len(grids)), [g["kind"] for g in grids])
        ax.set_ylabel(label)
    acc_ax.legend(fontsize=7)
    save_figure(fig, path)


def speed_curves(speed: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for name, key in (("FocusLLM", "focusllm"), ("full attention", "full_attention")):
        points = speed[key]
        if not points:
            continue
        x = [p["tokens"] / 1000 for p in points]
        for ax, field in zip(axes, ("encode_tokens_per_s", "ttft_s", "decode_tokens_per_s")):
            ax.plot(x, [p[field] for p in points], marker="o", label=name)
    for ax, label in zip(axes, ("prompt encoding (tokens/s)", "time to first token (s)", "decoding (tokens/s)")):
        ax.set(xlabel="context (K tokens)", ylabel=label, xscale="log")
        ax.legend(fontsize=8)
    reuse = speed["second_question"]
    fig.suptitle(
        f"second question over the same {_k(reuse['tokens'])} document: {reuse['ratio']:.2f}x the "
        f"first's time; encoding at {100 * max(p['fraction_of_matmul_rate'] for p in speed['focusllm']):.0f}%"
        f" of the matmul rate",
        fontsize=10,
    )
    save_figure(fig, path)


def perplexity_lines(ppl: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, by_n in ppl["perplexity"].items():
        lengths = sorted(by_n, key=int)
        ax.plot([int(n) / 1000 for n in lengths], [by_n[n] for n in lengths], marker="o", label=name)
    ax.set(
        xlabel="context (K tokens)",
        ylabel="perplexity of the continuation",
        title=f"held-out prose, {ppl['continuation_tokens']} continuation tokens",
    )
    ax.legend(fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(record: dict | None) -> float:
    return math.nan if record is None else float(record["correct"])


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 else str(n)
