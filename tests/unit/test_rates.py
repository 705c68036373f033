from gateway.media.rates import RateMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sample_reports_the_last_second_and_reading_resets_nothing() -> None:
    clock = Clock()
    meter = RateMeter(clock)
    for _ in range(30):  # 30 frames of 1000 bytes over one second
        meter.add(1000)
        clock.now += 1 / 30
    assert meter.sample() == (240_000, 30)
    assert meter.sample() == (240_000, 30)  # two readers see the same figures
    assert (meter.total_frames, meter.total_bytes) == (30, 30_000)


def test_old_frames_leave_the_window() -> None:
    clock = Clock()
    meter = RateMeter(clock)
    meter.add(500)
    clock.now += 0.5
    meter.add(500)
    clock.now += 0.6  # the first frame is now 1.1 s old
    assert meter.sample() == (4000, 1)
    clock.now += 5
    assert meter.sample() == (0, 0)
    assert meter.total_frames == 2
