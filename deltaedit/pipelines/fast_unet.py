"""The UNet run as prepared graphs: TorchScript on a CPU (`TracedUNet`), captured CUDA graphs on a
GPU (`CudaGraphUNet`); one graph per input shape, the eager module for anything else."""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict

import torch

from ..nn.style_unet import StyleConditionedUNet

log = logging.getLogger(__name__)


class _Denoise(torch.nn.Module):
    def __init__(self, unet: StyleConditionedUNet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, style, *render):
        # `render` is traced only where the model takes one: (x, t, s) or (x, t, s, R(s)).
        return self.unet.denoise(sample, timestep, style, *render)


class _GraphPerShape:
    """The UNet run as one prepared graph per input shape (the last MAX_GRAPHS shapes are kept).

    Subclasses say how a graph is built and run. Malformed inputs go to the eager module, whose
    checks raise the right error; if building a graph fails, calls of that shape run eagerly.
    """

    MAX_GRAPHS = 4  # input shapes kept (inversion batch 1, decoding 1 + number of targets)
    ACTION = "preparing"  # for the warning when building fails

    def __init__(self, unet: StyleConditionedUNet):
        self.unet = unet
        self._graphs: OrderedDict[tuple, object | None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def _build(self, inputs: tuple[torch.Tensor, ...]):
        """A graph for `inputs` = (x, t, s) or, for a model with render_channels, (x, t, s, render)."""
        raise NotImplementedError

    def _run(self, graph, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def _graph(self, inputs: tuple[torch.Tensor, ...]):
        x, t, s = inputs[:3]
        key = (tuple(x.shape), x.dtype, tuple(s.shape), s.dtype, tuple(t.shape), t.dtype)
        key += tuple(item for r in inputs[3:] for item in (tuple(r.shape), r.dtype))  # the rendering
        with self._lock:
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._build(inputs)
                except Exception as exc:  # noqa: BLE001 - any problem building it: stay on the eager module
                    log.warning("%s the UNet failed (%s); running it eagerly", self.ACTION, exc)
                    self._graphs[key] = None
                while len(self._graphs) > self.MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            return self._graphs[key]

    def _well_formed(self, x: torch.Tensor, s: torch.Tensor, render: torch.Tensor | None) -> bool:
        config = self.unet.config
        if x.ndim != 4 or s.ndim != 2 or s.shape[1] != config.style_dim or s.shape[0] != x.shape[0]:
            return False
        if not config.render_channels:
            return render is None
        want = (x.shape[0], config.render_channels, *x.shape[2:])
        return render is not None and tuple(render.shape) == want and render.dtype == x.dtype

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, t, s: torch.Tensor, render: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self._well_formed(x, s, render):
            return self.unet(x, t, s, render)
        t = torch.as_tensor(t, device=x.device)
        inputs = (x, t, s) if render is None else (x, t, s, render)
        graph = self._graph(inputs)
        return self.unet(x, t, s, render) if graph is None else self._run(graph, inputs)


class TracedUNet(_GraphPerShape):
    """The UNet for CPU inference, traced and frozen with TorchScript: one graph per input shape.

    On two CPU cores about half of a toy UNet call (64 px, batch 1) is Python: module calls and
    diffusers' per-block checks. A frozen trace runs the same aten ops from C++ (22 -> 11 ms per
    call), with outputs equal to eager up to float rounding. torch.compile does the same but
    compiles for ~100 s on this CPU; torch.jit traces in 0.5 s. The weights are baked into each
    graph, so this is for a model that no longer changes (an inference backbone, not training).
    """

    ACTION = "tracing"

    def _build(self, inputs):
        with warnings.catch_warnings():  # torch >= 2.10 marks torch.jit deprecated
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Denoise(self.unet).eval(), inputs, check_trace=False)
            return torch.jit.freeze(traced)

    def _run(self, graph, inputs):
        return graph(*inputs)


class CudaGraphUNet(_GraphPerShape):
    """The UNet on a GPU as captured CUDA graphs: one graph per input shape, replayed each step.

    A UNet call is a few hundred small kernels; at batch 1 launching them one by one from Python can
    take longer than running them. A captured graph launches them all at once. Inputs are copied into
    the graph's own buffers and the output is copied out, so a call behaves like the module. Each graph
    holds its activations while cached (a few hundred MB at 256 px).
    """

    ACTION = "capturing a CUDA graph of"
    WARMUP_CALLS = 2  # eager calls on a side stream before capture (cuDNN picks its algorithms)

    def __init__(self, unet: StyleConditionedUNet):
        super().__init__(unet)
        self._replay_lock = threading.Lock()  # one replay at a time: the graph's buffers are shared

    def _build(self, inputs):
        x = inputs[0]
        inputs = tuple(a.clone() for a in inputs)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_CALLS):
                self.unet.denoise(*inputs)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another request's GPU work in another thread (the app runs two) may go on
        # during the capture; only this thread's calls are checked.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self.unet.denoise(*inputs)
        return graph, inputs, output

    def _run(self, captured, inputs):
        graph, buffers, output = captured
        # The lock orders the host calls; the copies, replay and clone are queued on the current
        # stream, which every caller shares (the default one), so the next caller's copy into the
        # buffers runs on the GPU after this clone.
        with self._replay_lock:
            for buffer, value in zip(buffers, inputs):
                buffer.copy_(value)
            graph.replay()
            return output.clone()
