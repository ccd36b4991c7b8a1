"""Cron expressions for the two schedulers, checked before anything is sent.

Users write the usual 5-field cron (minute hour day-of-month month day-of-week, e.g.
"0 2 * * 1": Mondays at 02:00).

- Kubeflow Pipelines' API server parses crons with robfig/cron v1 (`cron.Parse`): 6
  fields with SECONDS first, or a descriptor (`@daily`, `@every 1h`, ...). A 5-field cron
  sent as it is would be read as seconds..month ("0 2 * * 1" = minute 2 of every hour in
  January), so `to_kfp` prefixes the second 0. KFP runs crons in UTC.
- Vertex AI takes the 5-field cron itself, optionally prefixed "TZ=Area/City ".
"""

from __future__ import annotations

import re
import zoneinfo

_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DOWS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}

# (name, min, max, names) in robfig order
_ROBFIG_FIELDS = [
    ("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None), ("month", 1, 12, _MONTHS), ("day-of-week", 0, 6, _DOWS),
]
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$")


class CronError(ValueError):
    """A cron expression the scheduler would refuse (message = why)."""


def _int_or_name(text: str, names) -> int:
    if names and text.lower() in names:
        return names[text.lower()]
    try:  # Go strconv.Atoi: optional sign, decimal digits
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError
        value = int(text)
    except ValueError:
        raise CronError(f"Failed to parse int from {text}") from None
    if value < 0:
        raise CronError(f"Negative number ({value}) not allowed: {text}")
    return value


def _check_field(field: str, lo: int, hi: int, names, star_ok=("*", "?")) -> None:
    """robfig/cron v1.2.0 getField/getRange."""
    for expr in [r for r in field.split(",") if r != ""]:  # strings.FieldsFunc drops empties
        range_and_step = expr.split("/")
        low_high = range_and_step[0].split("-")
        single = len(low_high) == 1
        if low_high[0] in star_ok:
            start, end = lo, hi
        else:
            start = _int_or_name(low_high[0], names)
            if len(low_high) == 1:
                end = start
            elif len(low_high) == 2:
                end = _int_or_name(low_high[1], names)
            else:
                raise CronError(f"Too many hyphens: {expr}")
        if len(range_and_step) == 2:
            step = _int_or_name(range_and_step[1], None)
            if single:
                end = hi
        elif len(range_and_step) > 2:
            raise CronError(f"Too many slashes: {expr}")
        else:
            step = 1
        if start < lo:
            raise CronError(f"Beginning of range ({start}) below minimum ({lo}): {expr}")
        if end > hi:
            raise CronError(f"End of range ({end}) above maximum ({hi}): {expr}")
        if start > end:
            raise CronError(f"Beginning of range ({start}) beyond end of range ({end}): {expr}")
        if step == 0:
            raise CronError(f"Step of range should be a positive number: {expr}")


def check_kfp_cron(spec: str) -> None:
    """Raises CronError where KFP's API server (robfig/cron v1 `cron.Parse`) would reject `spec`."""
    if not spec:
        raise CronError("Empty spec string")
    if spec.startswith("@"):
        if spec in _DESCRIPTORS:
            return
        if spec.startswith("@every "):
            if not _GO_DURATION.match(spec[len("@every "):]):
                raise CronError(f"Failed to parse duration {spec}")
            return
        raise CronError(f"Unrecognized descriptor: {spec}")
    fields = spec.split()
    if not 5 <= len(fields) <= 6:
        raise CronError(f"Expected 5 to 6 fields, found {len(fields)}: {spec}")
    for text, (_, lo, hi, names) in zip(fields, _ROBFIG_FIELDS):
        _check_field(text, lo, hi, names)


def check_unix_cron(spec: str) -> str:
    """Validates a 5-field unix cron (optionally "TZ=Area/City " / "CRON_TZ=Area/City " first).

    Returns the expression without the time-zone prefix. Day of week 0-7 (0 and 7 = Sunday),
    names allowed for months and days of week.
    """
    text = spec.strip()
    match = re.match(r"^(CRON_TZ|TZ)=(\S+)\s+(.*)$", text)
    if match:
        try:
            zoneinfo.ZoneInfo(match.group(2))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise CronError(f"unknown time zone {match.group(2)!r}") from None
        text = match.group(3)
    fields = text.split()
    if len(fields) != 5:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), found {len(fields)}: {spec!r}")
    bounds = [(0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTHS), (0, 7, _DOWS)]
    for field, (lo, hi, names) in zip(fields, bounds):
        _check_field(field, lo, hi, names, star_ok=("*",))
    return text


_TZ_PREFIX = re.compile(r"^(CRON_TZ|TZ)=(\S*)\s*")


def _refuse_time_zone(spec: str) -> None:
    match = _TZ_PREFIX.match(spec.strip())
    if match:
        raise CronError(f"Kubeflow Pipelines runs crons in UTC and takes no time-zone prefix: drop "
                        f"{match.group(0).strip()!r} and give the time in UTC (a Vertex AI schedule takes the prefix)")


def unix_to_kfp(spec: str) -> str:
    """A 5-field unix cron (no TZ prefix: KFP runs crons in UTC) as KFP's 6-field form."""
    _refuse_time_zone(spec)
    text = check_unix_cron(spec)
    minute, hour, dom, month, dow = text.split()
    # robfig's day of week is 0-6; unix cron also allows 7 for Sunday
    dow = ",".join("0" if part == "7" else part for part in dow.split(","))
    kfp = f"0 {minute} {hour} {dom} {month} {dow}"
    check_kfp_cron(kfp)
    return kfp


def to_kfp(cron: str) -> str:
    """The user's cron as KFP's API server reads it: a 5-field cron gets the second 0 in
    front; a 6-field cron or a descriptor is checked and kept.

    Raises:
      CronError: it does not parse.
    """
    text = cron.strip()
    _refuse_time_zone(text)
    if text.startswith("@") or len(text.split()) == 6:
        check_kfp_cron(text)
        return text
    return unix_to_kfp(text)
