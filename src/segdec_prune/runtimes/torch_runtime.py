"""PyTorch runtime (CPU or CUDA): the reference every other runtime is compared to."""

from __future__ import annotations

import numpy as np
import torch

from ..model import SegDecNet


class TorchRuntime:
    name = "torch"

    def __init__(self, model: SegDecNet, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = str(device)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        dec, seg = self.model(x)
        return dec[:, 0].float().cpu().numpy(), seg.float().cpu().numpy()
