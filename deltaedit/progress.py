"""Progress over the long loops (DDIM steps, refinement steps).

`steps(iterable, desc)` wraps a loop in tqdm: a terminal shows a bar, logs and tests stay quiet
(tqdm turns itself off when stderr is not a terminal), and a Gradio event that asks for
`gr.Progress(track_tqdm=True)` shows it on the page, since Gradio patches tqdm to follow every
bar made during the event. The library never imports gradio for this.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def steps(iterable, desc: str):
    """`iterable`, with a progress bar named `desc` (off where stderr is not a terminal)."""
    return tqdm(iterable, desc=desc, leave=False, disable=None)
