"""Where the viewer's model computations run: on one chosen thread (the main thread of
``clsr-view``), not on the web server's worker threads.

Why: torch's CPU kernels run OpenMP parallel regions, and every thread that runs torch ops gets
an OpenMP team of its own. Measured on the 2-core CPU (shipped model, 48x48 box): a decode took
60 ms on the main thread and 85 ms on a web-server worker thread (with one torch thread both
take ~100 ms, with OMP_WAIT_POLICY=PASSIVE both ~87 ms: the main thread's team spins between
regions, the other wakes per region); and when images had been opened (bicubic-degraded) on one
thread and decoded on another, the viewer's p50 was 90-104 ms instead of 46 ms -- two teams
spinning on two cores. So every torch computation of the viewer (opening an uploaded image
included) runs on one thread: requests hand it to :meth:`ComputeWorker.call` and wait; when
nothing serves the queue (tests with Starlette's TestClient), calls run inline.
"""
import queue
import threading
from concurrent.futures import Future


class ComputeWorker:
    def __init__(self):
        self._jobs = queue.Queue()
        self._serving = threading.Event()

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the serving thread (inline if none); its result or error."""
        if not self._serving.is_set() or threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future.result()

    def serve(self, stop):
        """Run submitted calls on this thread until ``stop()`` is true (checked every 0.2 s)."""
        self._thread = threading.current_thread()
        self._serving.set()
        try:
            while not stop():
                try:
                    future, fn, args, kwargs = self._jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:  # handed to the request, which answers with it
                    future.set_exception(err)
        finally:
            self._serving.clear()
            while not self._jobs.empty():  # nobody will run these any more: run them here
                future, fn, args, kwargs = self._jobs.get()
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:
                    future.set_exception(err)

    _thread = None
