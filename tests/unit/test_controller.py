"""The latency-budget controller against a simulated decode step: t(cap) = a + b * min(cap, natural);
the host-side timer that feeds it step durations."""

import random

import pytest

from lynx_sglang.scheduler.accounting import DecodeStepTimer
from lynx_sglang.scheduler.controller import TpotController


def simulate(controller, a, b, natural, steps, noise=0.0, seed=0):
    rng = random.Random(seed)
    caps = []
    for _ in range(steps):
        cap = controller.experts
        step_ms = a + b * min(cap, natural)
        step_ms *= 1.0 + rng.uniform(-noise, noise)
        controller.observe(step_ms)
        caps.append(controller.experts)
    return caps


def direction_changes(values):
    moves = [b - a for a, b in zip(values, values[1:]) if b != a]
    return sum(1 for x, y in zip(moves, moves[1:]) if (x > 0) != (y > 0))


@pytest.mark.parametrize("true_slope_factor", [0.5, 1.0, 2.0])  # calibration off by 2x either way
def test_converges_to_the_target_without_oscillating(true_slope_factor):
    calibrated_b = 4.0
    a, b, num_experts, target = 20.0, calibrated_b * true_slope_factor, 64, 80.0
    controller = TpotController(target, num_experts, ms_per_expert=calibrated_b)
    caps = simulate(controller, a, b, natural=num_experts, steps=8 * 40, noise=0.02)
    settled = caps[-8 * 10:]
    expected = (target - a) / b
    step_time = a + b * settled[-1]
    assert abs(step_time - target) <= 0.1 * target, (caps[::8], expected)
    assert max(settled) - min(settled) <= 2, settled[::8]  # no limit cycle once settled
    assert direction_changes(caps) <= 4, caps[::8]


def test_gives_experts_back_when_the_target_is_met_with_room_to_spare():
    controller = TpotController(100.0, 32, ms_per_expert=2.0)
    simulate(controller, a=40.0, b=4.0, natural=32, steps=8 * 30)  # load: needs a cap of 15
    assert controller.experts <= 16
    caps = simulate(controller, a=5.0, b=2.0, natural=32, steps=8 * 30)  # load drops: room to spare
    assert caps[-1] == 32 and controller.measured_ms < 100.0


def test_a_cap_that_does_not_bind_moves_down_until_it_does():
    # The batch only uses 10 experts: cutting the cap from 64 to 11 changes nothing, yet the
    # controller must get below 10 to reach a target the full batch misses.
    controller = TpotController(30.0, 64, ms_per_expert=2.0)
    caps = simulate(controller, a=10.0, b=2.5, natural=10, steps=8 * 60)
    assert caps[-1] <= 9 and abs(10.0 + 2.5 * min(caps[-1], 10) - 30.0) <= 3.0


def test_dead_band_holds_the_cap_near_the_target():
    controller = TpotController(50.0, 16, ms_per_expert=1.0)
    for _ in range(8 * 5):
        controller.observe(51.0)  # within 5 %
    assert controller.experts == 16


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        TpotController(0.0, 8, 1.0)
    with pytest.raises(ValueError):
        TpotController(10.0, 8, 0.0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_steps(timer, clock, steps):
    """steps: (pruned, seconds until the next forward starts); the samples the timer returns."""
    samples = []
    for pruned, seconds in steps:
        samples.append(timer.begin(pruned))
        clock.now += seconds
    return samples


def test_without_overlap_a_decode_followed_by_a_prefill_is_still_measured():
    clock = FakeClock()
    timer = DecodeStepTimer(lag=0, clock=clock)
    # prefill, decode, prefill, decode, ...: a prefill between every two decodes (steady short requests)
    samples = run_steps(timer, clock, [(False, 0.5), (True, 0.02), (False, 0.5), (True, 0.03), (False, 0.5)])
    assert samples == [None, None, pytest.approx(20.0), None, pytest.approx(30.0)]


def test_with_overlap_an_interval_measures_the_step_before_and_needs_two_decodes():
    clock = FakeClock()
    timer = DecodeStepTimer(lag=1, clock=clock)
    # Launch times under SGLang's overlap schedule: the interval after a step's start is the step before.
    steps = [(False, 0.01), (True, 0.5), (True, 0.02), (True, 0.02), (False, 0.02), (True, 0.5), (True, 0.03)]
    samples = run_steps(timer, clock, steps)
    # the 0.5 s after the first decode is the prefill before it: not a sample; nor the one after a prefill
    assert samples == [None, None, None, pytest.approx(20.0), pytest.approx(20.0), None, None]


def test_an_idle_scheduler_breaks_the_interval():
    clock = FakeClock()
    timer = DecodeStepTimer(lag=0, clock=clock)
    timer.begin(True)
    clock.now += 5.0  # the batch finished; the server waited for a request
    timer.idle()
    assert timer.begin(False) is None
    clock.now += 0.1
    assert timer.begin(True) is None
    clock.now += 0.02
    assert timer.begin(True) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        DecodeStepTimer(lag=2)
