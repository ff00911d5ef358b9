"""Drawing a sweep's results: throughput and p95 latency against threads, one line per replica count.

matplotlib is an optional extra; without it the caller prints the table instead.
"""

INSTALL_HINT = "pip install 'detserve[plot]' (or: pip install matplotlib)"


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def plot_rows(rows, out_path, title=None):
    """Draw rows (from report.read_rows) into an image file at out_path."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(f"matplotlib is not installed; install it with: {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # a file is wanted, never a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    lines = _lines_by_replicas(rows)
    thread_counts = sorted({p[0] for points in lines.values() for p in points})
    fig, (throughput_ax, latency_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for replicas, points in lines.items():
        label = f"{replicas} replica{'s' if replicas != '1' else ''}" if replicas else "this run"
        threads = [p[0] for p in points]
        throughput_ax.plot(threads, [p[1] for p in points], marker="o", label=label)
        latency_ax.plot(threads, [p[2] for p in points], marker="o", label=label)
    throughput_ax.set(xlabel="client threads", ylabel="images/s", title="throughput")
    latency_ax.set(xlabel="client threads", ylabel="ms", title="p95 latency (successful requests)")
    for ax in (throughput_ax, latency_ax):
        ax.set_xscale("log", base=2)  # thread counts double from point to point
        ax.set_xticks(thread_counts, [str(t) for t in thread_counts])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def _lines_by_replicas(rows):
    """{replicas: [(threads, throughput, p95), ...] sorted by threads}.

    A point where nothing succeeded has no p95; NaN leaves a gap in that line
    while its throughput of 0 is still drawn.
    """
    lines = {}
    for row in rows:
        p95 = row.get("latency_p95_ms")
        replicas = str(row.get("replicas") or "")
        lines.setdefault(replicas, []).append((int(float(row["threads"])), float(row["throughput_img_per_s"]),
                                               float(p95) if p95 not in (None, "") else float("nan")))
    return {r: sorted(points) for r, points in sorted(lines.items(), key=lambda item: _replica_order(item[0]))}


def _replica_order(replicas):
    try:
        return (0, float(replicas))
    except ValueError:
        return (1, replicas)
