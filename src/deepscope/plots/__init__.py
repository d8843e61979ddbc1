"""The figures of Glorot & Bengio (2010) drawn from probe records, and the HTML report that gathers them.

One module per figure family -- ``curves`` (error and loss curves, figs. 11-12), ``activations`` (figs. 2-4,
6, 10), ``gradients`` (figs. 7-9), ``jacobian`` -- each function taking plain rows and returning a matplotlib
Figure or ``None``; ``html`` renders them with the findings into one self-contained HTML file.
"""

from deepscope.plots.html import FIGURES, RunData, render, write_html

__all__ = ["FIGURES", "RunData", "render", "write_html"]
