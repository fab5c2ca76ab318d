"""One figure style for the whole book.

Call :func:`use_book_style` once at the top of a chapter; then use matplotlib as usual, or
:func:`figure` for a row of panels of the book's standard size.
"""

from __future__ import annotations

from typing import Any, cast

__all__ = ["PALETTE", "figure", "use_book_style"]

#: Colours for classes and curves, in order (colour-blind safe, from Okabe and Ito).
PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
)

_STYLE: dict[str, Any] = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.autolayout": True,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "font.size": 10,
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (and the colour cycle of :data:`PALETTE`).

    Examples:
        >>> import matplotlib
        >>> from companion.plot import PALETTE, use_book_style
        >>> with matplotlib.rc_context():  # restores the previous style on exit
        ...     use_book_style()
        ...     colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        ...     print(matplotlib.rcParams["figure.dpi"], colours[0] == PALETTE[0])
        110.0 True
    """
    import matplotlib as mpl
    from cycler import cycler

    cast(dict[str, Any], mpl.rcParams).update(_STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=list(PALETTE))


def figure(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 3.0) -> Any:
    """A figure with ``nrows x ncols`` panels of ``width x height`` inches each.

    Returns:
        ``(fig, axes)`` as from :func:`matplotlib.pyplot.subplots` (``axes`` squeezed).

    Examples:
        >>> import matplotlib
        >>> matplotlib.use("Agg")  # draw off-screen
        >>> import matplotlib.pyplot as plt
        >>> from companion.plot import figure
        >>> fig, axes = figure(ncols=2, width=3.0, height=2.5)
        >>> len(axes), fig.get_size_inches().tolist()
        (2, [6.0, 2.5])
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=True)
