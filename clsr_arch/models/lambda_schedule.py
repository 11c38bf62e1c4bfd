"""Context-loss weight schedule lambda(t) of the LocalSR paper's training loss (Sec. 3.5, Eq. 7).

``L = |y^ - y|_1 + lambda * |Y^_P - Y|_1``; the paper sets ``lambda = 0.5`` initially "then
gradually reduce[s] it to zero to allow the model to focus more on ROI restoration". The
decay shape is not given, so it is an option (``train.lambda_schedule``)::

    lambda_schedule: {type: cosine, start: 0.5, end: 0.0, periods: 200000}

* ``constant``: ``start`` for every iteration (the Table 4 ablation runs).
* ``linear``:   ``start + (end - start) * min(t / periods, 1)``.
* ``cosine``:   ``end + (start - end) * (1 + cos(pi * min(t / periods, 1))) / 2`` -- the same
  shape as the learning rate's CosineAnnealingRestartLR, so both reach their end together.

``t`` is the absolute training iteration (BasicSR counts from 1), so a resumed run continues
the schedule where it stopped; after ``periods`` iterations lambda stays at ``end``.
"""
import math

SCHEDULE_TYPES = ('constant', 'linear', 'cosine')


class LambdaSchedule:
    """lambda(t) for the context loss; ``LambdaSchedule.from_opt(opt, total_iter)(t)``."""

    def __init__(self, type='cosine', start=0.5, end=0.0, periods=None):  # noqa: A002  (YAML key)
        if type not in SCHEDULE_TYPES:
            raise ValueError(f'train.lambda_schedule.type must be one of {SCHEDULE_TYPES}, got {type!r}')
        start, end = float(start), float(end)
        if start < 0 or end < 0 or not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f'train.lambda_schedule start/end must be finite and >= 0, got {start}, {end}')
        if type != 'constant':
            if periods is None or int(periods) != periods or int(periods) < 1:
                raise ValueError(f'train.lambda_schedule.periods must be a positive integer for type '
                                 f'{type!r}, got {periods!r}')
            periods = int(periods)
        self.type, self.start, self.end, self.periods = type, start, end, periods

    @classmethod
    def from_opt(cls, opt, total_iter=None):
        """Build from ``train.lambda_schedule`` (a dict, or None for the paper's cosine 0.5 -> 0
        over ``total_iter``); ``periods`` defaults to ``total_iter``."""
        opt = dict(opt or {})
        unknown = set(opt) - {'type', 'start', 'end', 'periods'}
        if unknown:
            raise ValueError(f'train.lambda_schedule has unknown keys {sorted(unknown)}; '
                             'allowed: type, start, end, periods')
        opt.setdefault('type', 'cosine')
        if opt.get('periods') is None:
            opt['periods'] = total_iter
        return cls(**opt)

    def __call__(self, current_iter):
        if current_iter < 0:
            raise ValueError(f'iteration must be >= 0, got {current_iter}')
        if self.type == 'constant':
            return self.start
        progress = min(current_iter / self.periods, 1.0)
        if self.type == 'linear':
            return self.start + (self.end - self.start) * progress
        value = self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))
        # cos(pi) is -1 only up to rounding: make the end exact so that "lambda == 0" holds.
        return self.end if progress >= 1.0 else value

    def __repr__(self):
        return (f'LambdaSchedule(type={self.type!r}, start={self.start}, end={self.end}, '
                f'periods={self.periods})')
