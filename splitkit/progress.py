"""Progress of long work: tqdm bars on a terminal, plain lines everywhere else.

A redirected log of tqdm is carriage-return frames (hundreds of KB for one run), so off a terminal
:func:`bar` prints one line per few percent or seconds instead::

    [splitkit] harvest: 1.2M/4.0M tok (30%), 251k tok/s, ETA 11s

``SPLITKIT_PROGRESS=lines`` or ``=bars`` forces either form.
"""

from __future__ import annotations

import os
import sys
import time


def _si(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def use_lines(stream=None) -> bool:
    """Whether progress goes out as lines: forced by ``SPLITKIT_PROGRESS``, else when not a terminal."""
    mode = os.environ.get("SPLITKIT_PROGRESS", "").lower()
    if mode in ("lines", "bars"):
        return mode == "lines"
    stream = sys.stderr if stream is None else stream
    return not (hasattr(stream, "isatty") and stream.isatty())


class LineProgress:
    """The part of tqdm's interface splitkit uses, written as occasional whole lines.

    A line goes out when the work has passed the next ``every_pct`` percent and at least ``min_s``
    seconds have gone by since the last line, or after ``every_s`` seconds whatever the progress;
    and once at the end.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, every_pct: float = 5.0, every_s: float = 30.0, min_s: float = 5.0,
                 stream=None, **_ignored):
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.n = self.start_n = initial
        self.disable = disable
        self.every_pct, self.every_s, self.min_s = every_pct, every_s, min_s
        self.stream = sys.stderr if stream is None else stream
        self.t0 = self.t_last = time.monotonic()
        self.pct_last = self._pct()
        self.postfix = ""
        self.closed = False

    def _pct(self) -> float:
        return 100.0 * self.n / self.total if self.total else 0.0

    def _line(self, final: bool = False) -> str:
        dt = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.n - self.start_n) / dt
        done = f"{_si(self.n)}/{_si(self.total)} {self.unit} ({self._pct():.0f}%)" if self.total else f"{_si(self.n)} {self.unit}"
        parts = [f"[splitkit] {self.desc}: {done}", f"{_si(rate)} {self.unit}/s"]
        if final:
            parts.append(f"done in {_duration(dt)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _emit(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        pct = self._pct()
        since = now - self.t_last
        if (self.total and pct >= self.pct_last + self.every_pct and self.n < self.total and since >= self.min_s) \
                or since >= self.every_s:
            self._emit(self._line())
            self.t_last, self.pct_last = now, pct

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kw) -> None:
        items = dict(ordered_dict or {}, **kw)
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, s: str) -> None:
        if not self.disable:
            self._emit(s)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed and not self.disable and self.n > self.start_n:
            self._emit(self._line(final=True))
        self.closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0, disable: bool = False, **kw):
    """A progress bar: tqdm on a terminal, :class:`LineProgress` otherwise (same calls)."""
    if disable or not use_lines():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, **kw)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial, **kw)


def write(message: str, progress_bar=None) -> None:
    """Print a message without tearing a terminal bar."""
    if progress_bar is not None and hasattr(progress_bar, "write"):
        progress_bar.write(message)
    else:
        print(message, file=sys.stderr, flush=True)


class stage:
    """A line when a stage that has no bar of its own starts, and one with its time when it ends::

        with stage("links of run A", enabled=progress):
            ...

    prints ``[splitkit] links of run A ...`` and ``[splitkit] links of run A: done in 5m12s``
    (nothing more if the stage raised)."""

    def __init__(self, what: str, enabled: bool = True):
        self.what, self.enabled = what, enabled

    def __enter__(self) -> "stage":
        self.t0 = time.monotonic()
        if self.enabled:
            write(f"[splitkit] {self.what} ...")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.enabled and exc_type is None:
            write(f"[splitkit] {self.what}: done in {_duration(time.monotonic() - self.t0)}")
