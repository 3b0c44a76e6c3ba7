"""RoPE frequencies for each scaling type a loader must read, and exact angles at huge positions."""
import math
from fractions import Fraction

import pytest
import torch

from tests.tiny import tiny_config
from tinfinite import rope
from tinfinite.config import config_from_dict
from tinfinite.errors import UserError


def plain_inv_freq(theta: float, hd: int) -> list[float]:
    return [1.0 / theta ** (2 * i / hd) for i in range(hd // 2)]


def test_default_frequencies():
    cfg = config_from_dict(tiny_config(rope_theta=500000.0))
    assert torch.allclose(rope.inverse_frequencies(cfg),
                          torch.tensor(plain_inv_freq(500000.0, 16), dtype=torch.float64), rtol=1e-6)


def test_linear_scaling_slows_every_frequency():
    base = rope.inverse_frequencies(config_from_dict(tiny_config()))
    old_style = {"type": "linear", "factor": 4.0}        # older configs say "type"
    for raw in (tiny_config(rope_scaling=old_style),
                tiny_config(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})):
        assert torch.allclose(rope.inverse_frequencies(config_from_dict(raw)), base / 4)


def test_llama3_scaling_matches_its_definition():
    s = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64}
    cfg = config_from_dict(tiny_config(rope_scaling=s, rope_theta=10000.0,
                                       max_position_embeddings=512))
    want = []
    for f in plain_inv_freq(10000.0, 16):       # Llama 3.1's rule, one frequency at a time
        wavelen = 2 * math.pi / f
        if wavelen < 64 / 4.0:
            want.append(f)                       # short wavelengths: kept
        elif wavelen > 64 / 1.0:
            want.append(f / 8.0)                 # long wavelengths: slowed by the factor
        else:
            smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
            want.append((1 - smooth) * f / 8.0 + smooth * f)
    got = rope.inverse_frequencies(cfg)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-6)
    assert got[0] == pytest.approx(want[0]) and got[-1] == pytest.approx(want[-1])
    assert len(set((got / torch.tensor(plain_inv_freq(10000.0, 16))).round(decimals=3).tolist())) > 2


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "longrope", "made-up"])
def test_other_scalings_are_refused(kind):
    with pytest.raises(UserError, match=kind):
        config_from_dict(tiny_config(rope_scaling={"rope_type": kind, "factor": 2.0}))


@pytest.mark.parametrize("position", [0, 12345, 10 ** 9 + 7, 2 ** 40 - 3])
def test_relative_angles_are_exact_at_huge_positions(position):
    """RoPE only ever uses angle(i) - angle(j); at any position it must equal (i - j) * f."""
    inv_freq = rope.inverse_frequencies(config_from_dict(tiny_config()))
    distances = torch.tensor([0, 1, 7, 4095, 8191, 70000])
    a = rope.angles(position + distances, inv_freq)
    two_pi = 2 * Fraction("3.14159265358979323846264338327950288419716939937510")
    for d, row in zip(distances.tolist(), a.tolist()):
        for f, a_d, a_0 in zip(inv_freq.tolist(), row, a[0].tolist()):
            exact = Fraction(d) * Fraction(f)
            exact -= two_pi * (exact // two_pi)
            diff = (a_d - a_0) % (2 * math.pi)
            err = min(abs(diff - float(exact)), 2 * math.pi - abs(diff - float(exact)))
            assert err < 1e-9, (position, d, f, err)


def test_float32_angles_would_fail_this_test():
    """Why the care: the textbook float32 product is off by radians at 10^9 tokens."""
    f = 1.0
    p = 10 ** 9 + 7
    naive = (torch.tensor([p, p + 1], dtype=torch.float32) * f)
    assert abs((naive[1] - naive[0]).item() - 1.0) > 0.5  # float32 cannot even tell p from p+1
