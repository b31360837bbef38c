"""The temporal model of PoCaPNet: TeCNO's multi-stage TCN (Czempiel et al., MICCAI 2020; after Farha & Gall,
CVPR 2019), acausal inside each chunk as the official code or causal (TeCNO's option), with an optional LDAM-DRW
cosine classifier per stage.

Every dilated layer can compute a tail of its output from the inputs that tail depends on
(:meth:`_DilatedResidualLayer.forward_from`), or every other column of a subsequence whose step is its dilation
(:meth:`_DilatedResidualLayer.forward_subsampled`); a stage can compute its last column alone
(:meth:`_SingleStage.forward_last`). The streaming path uses them to recompute only what a new second changes and
what its estimate reads (:class:`pocapnet.stream.IncrementalMSTCN`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CosineClassifier", "MultiStageTCN"]


class _DilatedResidualLayer(nn.Module):
    """TeCNO/MS-TCN layer: ReLU(dilated conv k3) -> 1x1 conv -> dropout -> residual add."""

    def __init__(self, dilation: int, channels: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.dilation = dilation
        self.causal = causal
        # paper/code: acausal, padding=dilation; TeCNO causal: pad 2*dilation and trim -> here left padding only.
        self.pad = (2 * dilation, 0) if causal else (dilation, dilation)
        self.conv_dilated = nn.Conv1d(channels, channels, 3, padding=0, dilation=dilation)
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T)`` -> ``(N, C, T)``."""
        return self.forward_from(x, 0)

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Output columns ``[start, T)`` of :meth:`forward` ``(N, C, T - start)``, reading only the inputs they
        depend on (``x[..., start - pad_left:]``); the sequence's zero padding stays at its true ends."""
        left, right = self.pad
        lo = max(0, start - left)
        out = F.relu(self.conv_dilated(F.pad(x[..., lo:], (left - (start - lo), right))))
        return x[..., start:] + self.dropout(self.conv_1x1(out))

    def forward_subsampled(self, u: torch.Tensor, first: int) -> torch.Tensor:
        """:meth:`forward` at every second column of a subsequence whose step is the dilation.

        ``u`` ``(N, C, n)`` is this layer's input at the columns ``c0, c0 + d, ..., c0 + (n - 1) d`` (``d`` = the
        dilation), where the taps of an output column are neighbours in ``u``. Returns the outputs at
        ``u[..., first::2]``'s columns (step ``2 d``), ``(N, C, ceil((n - first) / 2))``: the layer's own weights as
        a dilation-1, stride-2 convolution. Exact where the sequence's true ends lie within one step of ``u``'s
        ends (``c0 < d``, the last column ``> T - 1 - d``): the zero padding then stands where the module pads;
        otherwise the outputs whose taps leave ``u`` read zeros instead of data, and the caller drops them.
        """
        d = self.dilation
        left, right = self.pad[0] // d, self.pad[1] // d  # (1, 1) acausal, (2, 0) causal, in steps of u
        conv = self.conv_dilated
        out = F.relu(F.conv1d(F.pad(u, (left, right))[..., first:], conv.weight, conv.bias, stride=2))
        return u[..., first::2] + self.dropout(self.conv_1x1(out))


class CosineClassifier(nn.Module):
    """LDAM-DRW's ``NormedLinear`` as a 1x1 convolution: ``scale * cos(x_t, w_c)`` (Cao et al. 2019, code).

    Input ``(N, C_in, T)``, output ``(N, classes, T)`` in ``[-scale, scale]``; no bias.
    """

    def __init__(self, cin: int, classes: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(classes, cin).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)  # (classes, C_in)
        return self.scale * torch.einsum("kc,nct->nkt", w, F.normalize(x, dim=1))


class _SingleStage(nn.Module):
    def __init__(
        self,
        num_layers: int,
        f_maps: int,
        dim: int,
        num_classes: int,
        dropout: float,
        causal: bool,
        cosine_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.conv_1x1 = nn.Conv1d(dim, f_maps, 1)
        self.layers = nn.ModuleList([_DilatedResidualLayer(2**i, f_maps, dropout, causal) for i in range(num_layers)])
        self.conv_out: nn.Module = (
            nn.Conv1d(f_maps, num_classes, 1)
            if cosine_scale is None
            else CosineClassifier(f_maps, num_classes, cosine_scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, dim, T)`` -> ``(N, classes, T)``."""
        out = self.conv_1x1(x)
        for layer in self.layers:
            out = layer(out)
        return self.conv_out(out)

    def forward_last(self, h: torch.Tensor) -> torch.Tensor:
        """The last column of :meth:`forward`, ``(N, classes)``, from ``h = conv_1x1(x)`` ``(N, f_maps, T)``.

        Each layer is evaluated only at the columns the last output can read: layer ``l`` (dilation ``2**l``) at
        the columns ``T - 1 - k * 2**(l + 1)``, from the first column of the stage's receptive field on
        (``T - 1 - reach``, ``reach`` = the sum of the layers' left padding), so it computes about
        ``min(T, reach) / 2**(l + 1)`` columns instead of ``T``.
        """
        T = h.shape[-1]
        col = max(0, T - 1 - sum(layer.pad[0] for layer in self.layers))  # first column the output reads
        # Cutting there makes the lowest outputs of a layer read zeros for the cut columns, but those outputs lie
        # left of what the layers above read (the receptive field shrinks by each layer's left padding).
        u = h[..., col:]  # layer input at the columns col, col + d, ..., T - 1 (d = 1 here)
        for layer in self.layers:
            d = layer.dilation
            first = ((T - 1 - col) // d) % 2  # index in u of the first column == T - 1 (mod 2 d)
            u, col = layer.forward_subsampled(u, first), col + first * d  # columns col, col + 2 d, ..., T - 1
        return self.conv_out(u[..., -1:])[..., 0]


class MultiStageTCN(nn.Module):
    """Multi-stage TCN (TeCNO ``MultiStageModel``): stage ``s > 1`` refines the softmax of stage ``s-1``.

    Input ``(N, dim, T)``, output ``(S, N, C, T)``.
    """

    def __init__(
        self,
        num_stages: int,
        num_layers: int,
        f_maps: int,
        dim: int,
        num_classes: int,
        dropout: float,
        causal: bool,
        cosine_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.stage1 = _SingleStage(num_layers, f_maps, dim, num_classes, dropout, causal, cosine_scale)
        self.stages = nn.ModuleList(
            [
                _SingleStage(num_layers, f_maps, num_classes, num_classes, dropout, causal, cosine_scale)
                for _ in range(num_stages - 1)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage1(x)
        outputs = [out]
        for stage in self.stages:
            out = stage(F.softmax(out, dim=1))
            outputs.append(out)
        return torch.stack(outputs, dim=0)  # S x (N, C, T) -> (S, N, C, T)
