"""Stage 4's figures: the file each is saved to and the caption it carries, in the notebook and in the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """A figure of stage 4: its file in <results>/<profile>/figures/ and its caption."""

    file: str
    caption: str


# Stage 4's figures, in the order 04_figures draws them: the notebook writes each to its file and shows its
# caption under it; the report's findings show FINDINGS_FIGURES again, with the same captions.
FIGURES: dict[str, Figure] = {
    "memorized": Figure("memorized.png", "The most memorized training examples (label, original index, mem ± se)"),
    "mem_hist": Figure("mem_hist.png", "Memorization estimates of every training example, with the threshold"),
    "pairs": Figure("pairs.png", "High-influence pairs: training example | the test example it helps"),
    "utility": Figure("utility.png", "Test accuracy after removing memorized vs random examples (95% CIs)"),
    "pairs_removal": Figure(
        "pairs_removal.png", "Accuracy on the pairs' test side after removing their train side vs as many random"
    ),
}
FINDINGS_FIGURES = ("memorized", "utility", "pairs")


def figure_path(out_dir: Path, name: str) -> Path:
    """Where stage 4 writes the figure `name` of FIGURES."""
    return Path(out_dir) / "figures" / FIGURES[name].file


def show_figure(fig, name: str) -> None:
    """In a notebook: the matplotlib figure `fig`, then its caption from FIGURES (the report's words)."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    display(fig)
    plt.close(fig)
    display(Markdown(f"*{FIGURES[name].caption}*"))
