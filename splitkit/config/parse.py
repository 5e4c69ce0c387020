"""Parsers of the command-line counts the studies take: ``--sizes`` specs and token counts."""

from __future__ import annotations

from .base import ConfigError


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``--sizes`` into a sorted tuple of dictionary sizes.

    Forms: one size ``4096``; a list ``512,2048,8192`` (any order, returned sorted); a doubling
    range ``512..131072`` (512, 1024, ..., 131072); a geometric range ``512..131072x4`` (512, 2048,
    ..., 131072). Each malformed spec raises a one-line :class:`ConfigError` saying what to change.
    """
    if not isinstance(text, str):
        raise ConfigError(f"--sizes: expected text such as '512..4096', got {type(text).__name__}")
    spec = text.strip()
    forms = "give '4096', a list '512,1024,4096', a doubling range '512..131072' or a step '512..131072x4'"
    if not spec:
        raise ConfigError(f"--sizes: empty; {forms}")

    def integer(part: str, what: str) -> int:
        p = part.strip()
        if not p:
            raise ConfigError(f"--sizes: {what} is missing in {text!r}; {forms}")
        try:
            v = int(p)
        except ValueError:
            raise ConfigError(f"--sizes: {what} {p!r} in {text!r} is not an integer; {forms}") from None
        if v <= 0:
            raise ConfigError(f"--sizes: {what} {v} in {text!r} must be a positive integer; {forms}")
        return v

    if ".." in spec:
        lo_s, _, rest = spec.partition("..")
        if ".." in rest:
            raise ConfigError(f"--sizes: one '..' per range, got {text!r}; {forms}")
        hi_s, x, step_s = rest.partition("x")
        lo, hi = integer(lo_s, "the start"), integer(hi_s, "the end")
        step = integer(step_s, "the step") if x else 2
        if step == 1:
            raise ConfigError(f"--sizes: a step of 1 never grows; use a step of 2 or more, e.g. {lo}..{hi}x2")
        if hi < lo:
            raise ConfigError(f"--sizes: the range {text!r} is reversed; put the smaller size first: {hi}..{lo}"
                              + (f"x{step}" if x else ""))
        out = [lo]
        while out[-1] < hi:
            out.append(out[-1] * step)
        if out[-1] != hi:  # the step overshot: name the nearest ends it does reach
            tail = f"x{step}" if x else ""
            ends = [e for e in (out[-2], out[-1]) if e > lo]
            raise ConfigError(f"--sizes: the step {step} from {lo} never lands on {hi}; end at "
                              + " or ".join(f"{e} ({lo}..{e}{tail})" for e in ends))
        return tuple(out)

    parts = spec.split(",")
    vals = [integer(p, f"item {i + 1}") for i, p in enumerate(parts)]
    dup = sorted({v for v in vals if vals.count(v) > 1})
    if dup:
        raise ConfigError(f"--sizes: {dup} repeated in {text!r}; give each size once")
    return tuple(sorted(vals))


def parse_counts(text: str, flag: str) -> tuple[int, ...]:
    """Parse token counts such as ``500k,1M,2M`` or ``500000,1000000`` (k = 1e3, M = 1e6) for ``flag``."""
    mult = {"k": 1_000, "m": 1_000_000}
    vals = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = float(part[:-1]) * mult[part[-1].lower()] if part[-1].lower() in mult else float(part)
        except ValueError:
            v = -1.0
        if v <= 0 or v != int(v):
            raise ConfigError(f"{flag}: cannot read {part!r} in {text!r}; give positive token counts such as "
                              "'500k,1M,2M' or '500000,1000000'")
        vals.append(int(v))
    if not vals:
        raise ConfigError(f"{flag}: no values in {text!r}; give e.g. '500k,1M,2M'")
    return tuple(sorted(set(vals)))


def parse_token_count(text: str, flag: str) -> int:
    """One token count such as ``2M`` or ``500k`` for ``flag``."""
    vals = parse_counts(text, flag)
    if len(vals) != 1:
        raise ConfigError(f"{flag}: give one token count such as '2M', got {text!r}")
    return vals[0]
