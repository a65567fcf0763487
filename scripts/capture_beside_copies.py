"""Can a thread work on a CUDA stream of its own while another thread captures CUDA graphs? (issue 15: the search
captures its graphs on the collecting thread; the learners would run on streams of their own.)

    python3 scripts/capture_beside_copies.py pool|apart [CAPTURES]

A thread copies small batches to the GPU and reads a sum back, on a stream it takes once from PyTorch's pool,
while this thread captures (and replays) graphs of 50 small kernels in "thread_local" mode:
- pool: each capture on a fresh `torch.cuda.Stream()`, as the search does. PyTorch hands pool streams out
  round-robin, 32 per priority, so a capture stream comes round to the copier's stream;
- apart: every capture on one high-priority stream taken once, so no capture stream is ever the copier's.
Prints how many captures succeeded and whether the copier survived. Each mode in a process of its own: a failed
capture can leave CUDA unusable.

On the lent H100 (torch 2.11, 2026-12-06), with a first version of this script whose captures were on fresh pool
streams whatever the copy: the copier died within the 300 captures in both of its modes (pinned non-blocking and
pageable copies), each time with "Cannot copy between CPU and CUDA tensors during CUDA graph capture": its own
stream was capturing.
"""

import sys
import threading

import torch


def main(mode: str, captures: int = 300) -> None:
    stop = threading.Event()
    copier_error: list[str] = []

    def copier() -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                while not stop.is_set():
                    torch.randn(64, 5, 16).to("cuda").sum().tolist()
        except Exception as exc:  # noqa: BLE001 - reported
            copier_error.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

    thread = threading.Thread(target=copier, daemon=True)
    thread.start()
    high = torch.cuda.Stream(priority=-1)
    done, error = 0, None
    x = torch.zeros(1024, device="cuda")
    for _ in range(captures):
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream() if mode == "pool" else high
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
        except Exception as exc:  # noqa: BLE001 - reported
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            break
    stop.set()
    thread.join(timeout=5)
    print(f"{mode}: {done} of {captures} captures succeeded" + (f", then: {error}" if error else "")
          + (f"; the copier failed: {copier_error[0]}" if copier_error else "; the copier ran throughout"))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
