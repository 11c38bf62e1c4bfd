"""One batch over several processes: the ranks of ``torchrun`` (``--nproc_per_node``, ``--nnodes``),
found in its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); without
torchrun, one rank. Images are split deterministically (:func:`split`); the ranks meet once at
the end (gloo, on CPU and CUDA alike: only a few small objects travel) to merge their summaries.
"""
import datetime
import os
import os.path as osp


class Ranks:
    """This process's place in the job, and the device and threads it should use."""

    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.rank = int(env.get('RANK', 0))
        self.world = int(env.get('WORLD_SIZE', 1))
        self.local_rank = int(env.get('LOCAL_RANK', 0))
        self.local_world = int(env.get('LOCAL_WORLD_SIZE', 1))
        self._group = False

    def device(self, asked='auto'):
        """``asked`` for one process; under torchrun ``auto``/``cuda`` mean this rank's own GPU
        (``cuda:LOCAL_RANK``) when there is CUDA, else the CPU."""
        import torch
        if self.world > 1 and asked in ('auto', 'cuda') and torch.cuda.is_available():
            return f'cuda:{self.local_rank % torch.cuda.device_count()}'
        return asked

    def threads(self, asked=None):
        """CPU threads of this rank: ``asked``, else the cores shared out among this node's ranks."""
        if asked is not None:
            return asked
        return max(1, (os.cpu_count() or 1) // max(1, self.local_world))

    def start(self):
        """Join the other ranks (a no-op for one process)."""
        if self.world > 1 and not self._group:
            import torch.distributed as dist
            dist.init_process_group('gloo', timeout=datetime.timedelta(hours=12))  # ranks finish at their own pace
            self._group = True
        return self

    def gather(self, obj):
        """Every rank's ``obj``, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self._group:
            import torch.distributed as dist
            # gloo aborts a rank ('terminate called without an active exception') when its peer
            # destroys the group while it is still in flight: leave together
            dist.barrier()
            dist.destroy_process_group()
            self._group = False


def split(paths, rank, world):
    """This rank's share of ``paths``: the same on every rank and every run, balanced by file
    size (a proxy of pixels): largest first, each to the rank with the fewest bytes so far
    (ties to the lower rank), then in path order within a rank."""
    load, mine = [0] * world, []
    for p in sorted(paths, key=lambda p: (-_size(p), os.fspath(p))):
        r = min(range(world), key=lambda k: (load[k], k))
        load[r] += max(_size(p), 1)
        if r == rank:
            mine.append(p)
    return sorted(mine, key=os.fspath)


def _size(path):
    try:
        return osp.getsize(path)
    except OSError:
        return 0
