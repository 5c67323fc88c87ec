"""Linear probe: bf16 GEMMs (float32 master weights) select like fp32 and reach its accuracy."""

from __future__ import annotations

import pytest
import torch

from fmeval.errors import ConfigError
from fmeval.probes.linear import ProbeConfig, _loss_and_grad, train_linear_probe


def _data(n, seed, d=48, c=4):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=torch.Generator().manual_seed(7)) * 0.6
    y = torch.randint(0, c, (n,), generator=g)
    return centres[y] * 20 + 5 + torch.randn(n, d, generator=g) * 20, y  # raw scale and offset


def test_bf16_probe_matches_fp32_accuracy():
    (xtr, ytr), (xva, yva), (xte, yte) = _data(1500, 0), _data(400, 1), _data(600, 2)
    cfg = ProbeConfig(epochs=40, batch_size=256)
    out = {}
    for prec in ("fp32", "bf16"):
        p = train_linear_probe(xtr, ytr, xva, yva, n_outputs=4, multilabel=False, config=cfg, precision=prec)
        out[prec] = (p, float((p.predict_proba(xte).argmax(1) == yte).float().mean()))
    (p32, a32), (p16, a16) = out["fp32"], out["bf16"]
    assert a32 > 0.6  # learnable, not trivial
    assert abs(a16 - a32) <= 0.02
    assert abs(p16.val_loss - p32.val_loss) <= 0.02 * p32.val_loss
    with pytest.raises(ConfigError, match="precision"):
        train_linear_probe(xtr, ytr, xva, yva, n_outputs=4, multilabel=False, precision="fp16")


def test_closed_form_gradient_matches_autograd_and_has_no_subnormals():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(64, 3, 5, generator=g) * 60).requires_grad_(True)  # saturated heads
    y = torch.randint(0, 5, (64,), generator=g)
    loss, gz = _loss_and_grad(z.detach(), y, multilabel=False)
    ref = torch.nn.functional.cross_entropy(z.permute(0, 2, 1), y.view(64, 1).expand(64, 3),
                                            reduction="none").mean(0)
    torch.testing.assert_close(loss, ref.detach())
    ref.sum().backward()
    torch.testing.assert_close(gz / 64, z.grad, atol=1e-7, rtol=1e-5)
    tiny = gz[(gz != 0)].abs().min()
    assert tiny >= torch.finfo(torch.float32).tiny  # no subnormal floats reach the GEMM
