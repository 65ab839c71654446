"""The running sums of an epoch's logged losses while they stay on the device, so no training step waits for it."""

import torch


class PendingSums:
    """The epoch's running sums while they live on the device, and the first non-finite step since the last read.

    Sums are float64 and continue from the host's values, so an epoch's means are the same sums, in the same
    order, as when each step's values were read one by one.
    """

    def __init__(self):
        self.sums = {}  # name -> float64 0-d tensor on the device
        self.bad = None  # (step, loss, gradient norm) of the first non-finite step; step -1: none

    def add(self, host: dict, values: dict) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value).detach().float().double()  # the float32 value a read would have given
            if name not in self.sums:
                start = torch.tensor(host.get(name, 0.0), dtype=torch.float64)
                self.sums[name] = start.to(value.device, non_blocking=True)
            self.sums[name] = self.sums[name] + value

    def note_finite(self, finite: torch.Tensor, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        record = torch.stack([torch.full_like(grad_norm, step, dtype=torch.float64), loss.detach().double(),
                              grad_norm.double()])
        if self.bad is None:
            self.bad = torch.full_like(record, -1.0)
        self.bad = torch.where((self.bad[0] < 0) & ~finite, record, self.bad)

    def read(self, host: dict) -> tuple:
        """(the running sums as a dict of floats, (step, loss, grad) of the first non-finite step or None)."""
        if not self.sums and self.bad is None:
            return host, None
        names, bad = list(self.sums), [-1.0] if self.bad is None else None
        values = torch.stack([*self.sums.values(), *([] if self.bad is None else self.bad)]).tolist()
        bad = bad or values[len(names):]
        self.__init__()
        return {**host, **dict(zip(names, values))}, (bad if bad[0] >= 0 else None)
