"""The Prometheus text format 0.0.4 and OpenMetrics 1.0.0, written straight from plain values.

prometheus_client's encoders go through a Metric and a Sample object per series, which costs seconds
and hundreds of megabytes at 10,000 pipelines; /metrics writes its families here instead, and the test
suite checks that prometheus_client's own parsers read the result as they read its encoders' output.

A family is (kind, name, help, label names, values by label values). Kinds: counter (its name ends in
`_total`), gauge, info (value 1), histogram (a metrics.Histogram), summary ((sum, count)). A label
value of None leaves the label out of that series.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.utils import floatToGoString

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Family = tuple[str, str, str, list[str], Mapping[tuple[Any, ...], Any]]


def wants_openmetrics(accept: str) -> bool:
    """What prometheus_client's choose_encoder decides: OpenMetrics when the scraper lists it."""
    return any(part.split(";", 1)[0].strip() == "application/openmetrics-text" for part in accept.split(","))


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether Accept-Encoding allows gzip (RFC 9110 12.5.3: `gzip;q=0` refuses it)."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "*"):
            weight = params.replace(" ", "").removeprefix("q=") or "1"
            try:
                return float(weight) > 0
            except ValueError:
                return False
    return False


def render(families: Iterable[Family], openmetrics: bool) -> str:
    """The families in one format, without OpenMetrics' final `# EOF` (see `EOF`)."""
    out: list[str] = []
    for family in families:
        _family(out, *family, openmetrics=openmetrics)
    return "".join(out)


EOF = "# EOF\n"


def _family(
    out: list[str],
    kind: str,
    name: str,
    help_text: str,
    labels: list[str],
    values: Mapping[tuple[Any, ...], Any],
    openmetrics: bool,
) -> None:
    out.append(header(kind, name, help_text, openmetrics))
    out.append(samples(kind, name, labels, values))


def header(kind: str, name: str, help_text: str, openmetrics: bool) -> str:
    """The HELP and TYPE lines of a family: all that differs between the two formats."""
    family, sample = _names(kind, name)
    shown = family if openmetrics else sample  # OpenMetrics names the family without _total or _info
    kind = "gauge" if kind == "info" and not openmetrics else kind
    return f"# HELP {shown} {_help(help_text, openmetrics)}\n# TYPE {shown} {kind}\n"


def samples(kind: str, name: str, labels: list[str], values: Mapping[tuple[Any, ...], Any]) -> str:
    """The sample lines of a family (the same in both formats), in label order: the same runs, the same
    text. Labels are written in name order, as prometheus_client writes them."""
    if not values:
        return ""
    return _writer(kind, name, tuple(labels))(values)


class Writer:
    """The sample lines of one family; made once per family, called once per pipeline at each scrape."""

    def __init__(self, kind: str, name: str, labels: tuple[str, ...]):
        self.kind, self.name, self.labels = kind, _names(kind, name)[1], labels
        self.order = tuple(sorted(range(len(labels)), key=labels.__getitem__))
        self.full = _template(labels, (True,) * len(labels))

    def __call__(self, values: Mapping[tuple[Any, ...], Any]) -> str:
        out: list[str] = []
        kind, name, order = self.kind, self.name, self.order
        try:
            keys = sorted(values)
        except TypeError:  # None beside a value in one label
            keys = sorted(values, key=_sort_key)
        for key in keys:
            value = values[key]
            if None in key:
                parts = [key[i] for i in order if key[i] is not None]
                template = _template(self.labels, tuple(key[i] is not None for i in order))
            else:
                parts = [key[i] for i in order]
                template = self.full
            pairs = template.format(*parts)
            # Escaping is rare (label values are names): only when a value holds what must be escaped.
            if pairs.count('"') != 2 * len(parts) or "\\" in pairs or "\n" in pairs:
                pairs = template.format(*map(_escape, parts))
            if kind == "histogram":
                _histogram(out, name, pairs, value)
            elif kind == "summary":
                total, count = value
                braced = _braces(pairs)
                out.append(f"{name}_count{braced} {_number(count)}\n{name}_sum{braced} {_number(total)}\n")
            elif pairs:
                out.append(f"{name}{{{pairs}}} {_number(1 if kind == 'info' else value)}\n")
            else:
                out.append(f"{name} {_number(1 if kind == 'info' else value)}\n")
        return "".join(out)


@functools.cache
def _writer(kind: str, name: str, labels: tuple[str, ...]) -> Writer:
    return Writer(kind, name, labels)


@functools.cache
def _template(labels: tuple[str, ...], present: tuple[bool, ...]) -> str:
    """`a="{}",b="{}"` for the labels present, in name order."""
    names = sorted(labels)
    return ",".join(f'{name}="{{}}"' for name, here in zip(names, present, strict=True) if here)


def _names(kind: str, name: str) -> tuple[str, str]:
    """The family's name and its samples' (counters end in _total, info in _info)."""
    suffix = {"counter": "_total", "info": "_info"}.get(kind)
    if suffix is None:
        return name, name
    family = name.removesuffix(suffix)
    return family, family + suffix


def _histogram(out: list[str], name: str, pairs: str, histogram: Any) -> None:
    prefix = f"{name}_bucket{{{pairs}{',' if pairs else ''}le="
    cumulative = 0
    for le, count in zip(_les(histogram.bounds), histogram.counts, strict=True):
        cumulative += count
        out.append(f'{prefix}"{le}"}} {_number(cumulative)}\n')
    out.append(f"{name}_count{_braces(pairs)} {_number(cumulative)}\n")
    out.append(f"{name}_sum{_braces(pairs)} {_number(histogram.sum)}\n")


_LES: dict[tuple[float, ...], tuple[str, ...]] = {}


def _les(bounds: tuple[float, ...]) -> tuple[str, ...]:
    les = _LES.get(bounds)
    if les is None:
        les = _LES[bounds] = (*(floatToGoString(bound) for bound in bounds), "+Inf")
    return les


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if part is None else part for part in key)


def _braces(pairs: str) -> str:
    return f"{{{pairs}}}" if pairs else ""


def _number(value: float) -> str:
    """A value as both formats read it; prometheus_client's own spelling for the integers of counts."""
    if isinstance(value, int) and -1_000_000 < value < 1_000_000:
        return f"{value}.0"
    text = repr(float(value))
    return text if text[-1].isdigit() else floatToGoString(value)  # inf and nan: +Inf, -Inf, NaN


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if openmetrics else text
