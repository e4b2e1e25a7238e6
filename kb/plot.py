"""recall@k curves per retrieval mode, drawn with matplotlib for the README."""

from __future__ import annotations

from kb.errors import KBError


def plot_recall(curves: dict[str, list[float]], path: str, title: str) -> None:
    """Write a PNG with one recall@k line per mode.

    Raises:
        KBError: the file cannot be written, or its extension names no image format.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for mode, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=mode)
    ax.set(xlabel="k (chunks retrieved)", ylabel="recall@k", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:  # a missing folder; an extension matplotlib cannot write
        raise KBError(f"{path}: cannot write the plot: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    finally:
        plt.close(fig)
