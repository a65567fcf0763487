"""Does another thread's host-to-device copy break a CUDA graph capture in "thread_local" mode? (issue 15: the
search captures its graphs on the collecting thread while the learner threads build their batches.)

    python3 scripts/capture_beside_copies.py pinned|pageable [CAPTURES]

A thread copies small batches to the GPU on a stream of its own, from pinned memory without blocking or from
pageable memory, while this thread captures (and replays) graphs of 50 small kernels, until one fails; prints how
many succeeded and the error. Each mode in a process of its own: a failed capture can leave CUDA unusable.
"""

import sys
import threading

import torch


def main(mode: str, captures: int = 300) -> None:
    stop = threading.Event()

    def copier() -> None:
        with torch.cuda.stream(torch.cuda.Stream()):
            while not stop.is_set():
                host = torch.randn(64, 5, 16)
                batch = host.pin_memory().to("cuda", non_blocking=True) if mode == "pinned" else host.to("cuda")
                batch.sum().tolist()

    thread = threading.Thread(target=copier, daemon=True)
    thread.start()
    done, error = 0, None
    x = torch.zeros(1024, device="cuda")
    for _ in range(captures):
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    y = x
                    for _ in range(50):
                        y = y * 1.0001 + 1
                finally:
                    graph.capture_end()
            graph.replay()
            torch.cuda.synchronize()
            done += 1
        except Exception as exc:  # noqa: BLE001 - shown
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            break
    stop.set()
    thread.join(timeout=5)
    print(f"{mode}: {done} of {captures} captures succeeded" + (f", then: {error}" if error else ""))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
